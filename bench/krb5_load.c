/* krb5_load: a load generator against an MIT KDC, written on libkrb5 (the anchor of issue 11).
 *
 * How this works: T threads, each with its own krb5_context, run one exchange type back to back;
 * the threads are the exchanges in flight (each waits for its reply, like a real client).
 * Before the clock starts every thread copies its devices' keytabs (DIR/devNNNN.keytab, principal
 * host/devNNNN) into private MEMORY: keytabs, and for tgs/u2u gets the TGTs it needs (into a
 * MEMORY: ccache for device A, in memory for device B), so the timed loop does no file I/O;
 * it also checks one service ticket: tgs sealed in B's long-term key, u2u in B's TGT session key.
 * Thread t drives devices t, t+T, t+2T, ... as A; B is always the next device.
 *
 *   as   krb5_get_init_creds_keytab for A: with +preauth two KDC messages (PREAUTH_REQUIRED,
 *        then PA-ENC-TIMESTAMP)
 *   as1  the same with the pre-auth list set to PA-ENC-TIMESTAMP: one optimistic message
 *   tgs  krb5_get_credentials(KRB5_GC_NO_STORE) for host/devB with A's TGT
 *   u2u  the same with KRB5_GC_USER_USER and B's TGT as the second ticket: the KDC seals the
 *        ticket in B's TGT session key
 *
 * Output: one JSON line on stdout (completed, failed, seconds, per_second, p50_ms/p99_ms over
 * the completed exchanges, cpu_seconds of this process from getrusage over the timed window, and
 * the first error's message from krb5_get_error_message). Exit 0 when nothing failed, 1 when any
 * exchange failed, 2 when the setup failed. With -S it prints "ready" after the setup and waits
 * for a line on stdin, so a caller can read the KDC's CPU time just before the window opens.
 *
 * Build: gcc -O2 -pthread krb5_load.c $(krb5-config --cflags --libs krb5)  (bench/kerberos.py)
 */
#define _GNU_SOURCE
#include <krb5.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

enum exchange { EX_AS, EX_AS1, EX_TGS, EX_U2U };
static const char *const exchange_names[] = { "as", "as1", "tgs", "u2u" };

struct device {
    krb5_principal princ;
    krb5_keytab kt;     /* MEMORY: copy of the device's keytab */
    krb5_ccache cc;     /* MEMORY: ccache with its TGT (A, for tgs/u2u) */
    krb5_creds tgt;     /* its TGT (B: u2u's second ticket; the setup check's other key) */
    int have_tgt;
};

struct pair { struct device a, b; };

struct worker {
    pthread_t thread;
    int id;
    krb5_context ctx;
    struct pair *pairs;
    int npairs;
    double *lat;        /* latency of each completed exchange, ms */
    long nlat, caplat;
    long completed, failed;
};

static int exchange = -1;           /* an enum exchange once parsed */
static const char *ktdir;
static int ndevices = 0, nthreads = 8;
static long count = 0;                 /* total exchanges, or 0: run for `seconds` */
static double seconds = 0;
static long remaining;                 /* exchanges left to claim in count mode */
static struct timespec deadline;
static pthread_barrier_t setup_done, go;
static pthread_mutex_t err_lock = PTHREAD_MUTEX_INITIALIZER;
static char first_error[512];
static int setup_failed;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

/* Keep the first error message of the run (setup or exchange). */
static void note_error(krb5_context ctx, krb5_error_code ret, const char *what, int in_setup)
{
    const char *msg = krb5_get_error_message(ctx, ret);
    pthread_mutex_lock(&err_lock);
    if (!first_error[0])
        snprintf(first_error, sizeof(first_error), "%s: %s", what, msg);
    if (in_setup)
        setup_failed = 1;
    pthread_mutex_unlock(&err_lock);
    krb5_free_error_message(ctx, msg);
}

/* Copy DIR/devNNNN.keytab into a MEMORY: keytab private to this thread. */
static krb5_error_code load_device(struct worker *w, struct device *d, int n)
{
    char name[64], path[4096];
    krb5_keytab file_kt;
    krb5_kt_cursor cur;
    krb5_keytab_entry entry;
    krb5_error_code ret;

    snprintf(name, sizeof(name), "host/dev%04d", n);
    if ((ret = krb5_parse_name(w->ctx, name, &d->princ)))
        return ret;
    snprintf(path, sizeof(path), "FILE:%s/dev%04d.keytab", ktdir, n);
    if ((ret = krb5_kt_resolve(w->ctx, path, &file_kt)))
        return ret;
    snprintf(name, sizeof(name), "MEMORY:krb5load-%d-%d-%p", w->id, n, (void *)d);
    if ((ret = krb5_kt_resolve(w->ctx, name, &d->kt)))
        goto out;
    if ((ret = krb5_kt_start_seq_get(w->ctx, file_kt, &cur)))
        goto out;
    while (!(ret = krb5_kt_next_entry(w->ctx, file_kt, &entry, &cur))) {
        ret = krb5_kt_add_entry(w->ctx, d->kt, &entry);
        krb5_free_keytab_entry_contents(w->ctx, &entry);
        if (ret)
            break;
    }
    krb5_kt_end_seq_get(w->ctx, file_kt, &cur);
    if (ret == KRB5_KT_END)
        ret = 0;
out:
    krb5_kt_close(w->ctx, file_kt);
    return ret;
}

static krb5_error_code get_tgt(struct worker *w, struct device *d, int into_ccache)
{
    char name[64];
    krb5_error_code ret;

    if ((ret = krb5_get_init_creds_keytab(w->ctx, &d->tgt, d->princ, d->kt, 0, NULL, NULL)))
        return ret;
    d->have_tgt = 1;
    if (!into_ccache)
        return 0;
    snprintf(name, sizeof(name), "MEMORY:krb5load-%d-%p", w->id, (void *)d);
    if ((ret = krb5_cc_resolve(w->ctx, name, &d->cc)) || (ret = krb5_cc_initialize(w->ctx, d->cc, d->princ)))
        return ret;
    return krb5_cc_store_cred(w->ctx, d->cc, &d->tgt);
}

/* A service ticket for B with A's TGT: sealed in B's key (tgs) or B's TGT session key (u2u). */
static krb5_error_code service_ticket(struct worker *w, struct pair *p, krb5_creds **out)
{
    krb5_creds in;

    memset(&in, 0, sizeof(in));
    in.client = p->a.princ;
    in.server = p->b.princ;
    if (exchange == EX_U2U)
        in.second_ticket = p->b.tgt.ticket;
    return krb5_get_credentials(w->ctx, KRB5_GC_NO_STORE | (exchange == EX_U2U ? KRB5_GC_USER_USER : 0),
                                p->a.cc, &in, out);
}

/* Whether the ticket's encrypted part opens with `key`. */
static int opens_with(krb5_context ctx, const krb5_data *ticket_der, const krb5_keyblock *key)
{
    krb5_ticket *t;
    krb5_data plain;
    int ok;

    if (krb5_decode_ticket(ticket_der, &t))
        return 0;
    plain.length = t->enc_part.ciphertext.length;
    plain.data = malloc(plain.length ? plain.length : 1);
    ok = !krb5_c_decrypt(ctx, key, KRB5_KEYUSAGE_KDC_REP_TICKET, NULL, &t->enc_part, &plain);
    free(plain.data);
    krb5_free_ticket(ctx, t);
    return ok;
}

/* Before the clock starts: one service ticket, checked to be sealed the way the exchange
 * promises (tgs: B's long-term key, not its TGT session key; u2u: the other way round).
 * Any failure is noted as a setup failure. */
static krb5_error_code check_service_ticket(struct worker *w, struct pair *p)
{
    krb5_keytab_entry entry;
    krb5_creds *out;
    krb5_error_code ret;
    int by_key, by_session;

    if ((ret = service_ticket(w, p, &out))) {
        note_error(w->ctx, ret, "service ticket (setup)", 1);
        return ret;
    }
    if ((ret = krb5_kt_get_entry(w->ctx, p->b.kt, p->b.princ, 0, 0, &entry))) {
        note_error(w->ctx, ret, "B's key (setup)", 1);
        krb5_free_creds(w->ctx, out);
        return ret;
    }
    by_key = opens_with(w->ctx, &out->ticket, &entry.key);
    by_session = p->b.have_tgt && opens_with(w->ctx, &out->ticket, &p->b.tgt.keyblock);
    krb5_free_keytab_entry_contents(w->ctx, &entry);
    krb5_free_creds(w->ctx, out);
    if (exchange == EX_TGS ? (by_key && !by_session) : (by_session && !by_key))
        return 0;
    pthread_mutex_lock(&err_lock);
    if (!first_error[0])
        snprintf(first_error, sizeof(first_error), "%s ticket for B is not sealed as expected "
                 "(opens with B's key: %d, with B's TGT session key: %d)", exchange_names[exchange], by_key, by_session);
    setup_failed = 1;
    pthread_mutex_unlock(&err_lock);
    return KRB5KRB_AP_ERR_BAD_INTEGRITY;
}

static krb5_error_code one_exchange(struct worker *w, struct pair *p, krb5_get_init_creds_opt *opt)
{
    krb5_creds creds, *out = NULL;
    krb5_error_code ret;

    if (exchange == EX_AS || exchange == EX_AS1) {
        ret = krb5_get_init_creds_keytab(w->ctx, &creds, p->a.princ, p->a.kt, 0, NULL, opt);
        if (!ret)
            krb5_free_cred_contents(w->ctx, &creds);
        return ret;
    }
    ret = service_ticket(w, p, &out);
    if (!ret)
        krb5_free_creds(w->ctx, out);
    return ret;
}

static krb5_error_code setup(struct worker *w)
{
    krb5_error_code ret;
    int k, a;

    if ((ret = krb5_init_context(&w->ctx))) {
        fprintf(stderr, "krb5_load: krb5_init_context failed (%d)\n", ret);
        setup_failed = 1;
        return ret;
    }
    w->npairs = ndevices >= nthreads ? (ndevices - w->id + nthreads - 1) / nthreads : 1;
    w->pairs = calloc(w->npairs, sizeof(*w->pairs));
    for (k = 0; k < w->npairs; k++) {
        struct pair *p = &w->pairs[k];
        a = ndevices >= nthreads ? w->id + k * nthreads : w->id % ndevices;
        if ((ret = load_device(w, &p->a, a)) || (ret = load_device(w, &p->b, (a + 1) % ndevices))) {
            note_error(w->ctx, ret, "loading keytab", 1);
            return ret;
        }
        if (exchange == EX_TGS || exchange == EX_U2U) {
            if ((ret = get_tgt(w, &p->a, 1))) {
                note_error(w->ctx, ret, "TGT for A (setup)", 1);
                return ret;
            }
            if ((ret = get_tgt(w, &p->b, 0))) {
                note_error(w->ctx, ret, "TGT for B (setup)", 1);
                return ret;
            }
        }
    }
    if (exchange == EX_TGS || exchange == EX_U2U)
        return check_service_ticket(w, &w->pairs[0]);
    return 0;
}

static void *run(void *arg)
{
    struct worker *w = arg;
    krb5_get_init_creds_opt *opt = NULL;
    krb5_preauthtype enc_timestamp[] = { KRB5_PADATA_ENC_TIMESTAMP };
    krb5_error_code ret;
    struct timespec ts;
    long k = 0;
    double t0;

    if (!setup(w)) {
        if ((ret = krb5_get_init_creds_opt_alloc(w->ctx, &opt)))
            note_error(w->ctx, ret, "krb5_get_init_creds_opt_alloc", 1);
        else if (exchange == EX_AS1)
            krb5_get_init_creds_opt_set_preauth_list(opt, enc_timestamp, 1);
    }
    pthread_barrier_wait(&setup_done);
    pthread_barrier_wait(&go);
    if (setup_failed)
        return NULL;
    for (;;) {
        if (count) {
            if (__atomic_fetch_sub(&remaining, 1, __ATOMIC_RELAXED) <= 0)
                break;
        } else {
            clock_gettime(CLOCK_MONOTONIC, &ts);
            if (ts.tv_sec > deadline.tv_sec || (ts.tv_sec == deadline.tv_sec && ts.tv_nsec >= deadline.tv_nsec))
                break;
        }
        t0 = now_s();
        ret = one_exchange(w, &w->pairs[k++ % w->npairs], opt);
        if (ret) {
            w->failed++;
            note_error(w->ctx, ret, exchange_names[exchange], 0);
            continue;
        }
        if (w->nlat == w->caplat) {
            w->caplat = w->caplat ? 2 * w->caplat : 4096;
            w->lat = realloc(w->lat, w->caplat * sizeof(*w->lat));
        }
        w->lat[w->nlat++] = (now_s() - t0) * 1e3;
        w->completed++;
    }
    krb5_get_init_creds_opt_free(w->ctx, opt);
    return NULL;
}

static int by_value(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

static void print_json_string(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            printf("\\%c", *s);
        else if ((unsigned char)*s < 0x20)
            printf("\\u%04x", *s);
        else
            putchar(*s);
    }
    putchar('"');
}

static void usage(void)
{
    fprintf(stderr, "usage: krb5_load -x as|as1|tgs|u2u -k KEYTAB_DIR -d DEVICES [-t THREADS] "
                    "(-n COUNT | -s SECONDS) [-S]\n"
                    "  keytabs DIR/devNNNN.keytab for host/devNNNN in the default realm (KRB5_CONFIG)\n"
                    "  -S: print 'ready' after the setup and wait for a line on stdin\n");
    exit(2);
}

int main(int argc, char **argv)
{
    struct worker *workers;
    double t0, t1, c0, c1, *all;
    long completed = 0, failed = 0, n = 0;
    int c, i, sync = 0;
    char line[16];

    while ((c = getopt(argc, argv, "x:k:d:t:n:s:S")) != -1) {
        switch (c) {
        case 'x':
            for (i = 0; i < 4; i++)
                if (!strcmp(optarg, exchange_names[i]))
                    exchange = i;
            break;
        case 'k': ktdir = optarg; break;
        case 'd': ndevices = atoi(optarg); break;
        case 't': nthreads = atoi(optarg); break;
        case 'n': count = atol(optarg); break;
        case 's': seconds = atof(optarg); break;
        case 'S': sync = 1; break;
        default: usage();
        }
    }
    if (exchange < 0 || !ktdir || ndevices < 2 || nthreads < 1 || (count <= 0 && seconds <= 0))
        usage();

    workers = calloc(nthreads, sizeof(*workers));
    pthread_barrier_init(&setup_done, NULL, nthreads + 1);
    pthread_barrier_init(&go, NULL, nthreads + 1);
    for (i = 0; i < nthreads; i++) {
        workers[i].id = i;
        if (pthread_create(&workers[i].thread, NULL, run, &workers[i])) {
            perror("pthread_create");
            return 2;
        }
    }
    pthread_barrier_wait(&setup_done);
    if (setup_failed) {
        fprintf(stderr, "krb5_load: setup failed: %s\n", first_error);
        return 2;
    }
    if (sync) {
        printf("ready\n");
        fflush(stdout);
        if (!fgets(line, sizeof(line), stdin))
            return 2;
    }
    remaining = count;
    t0 = now_s();
    c0 = cpu_s();
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += (time_t)seconds;
    deadline.tv_nsec += (long)((seconds - (time_t)seconds) * 1e9);
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    pthread_barrier_wait(&go);
    for (i = 0; i < nthreads; i++)
        pthread_join(workers[i].thread, NULL);
    t1 = now_s();
    c1 = cpu_s();

    for (i = 0; i < nthreads; i++) {
        completed += workers[i].completed;
        failed += workers[i].failed;
    }
    all = malloc((completed + 1) * sizeof(*all));
    for (i = 0; i < nthreads; i++) {
        memcpy(all + n, workers[i].lat, workers[i].nlat * sizeof(*all));
        n += workers[i].nlat;
    }
    qsort(all, n, sizeof(*all), by_value);
    printf("{\"exchange\": \"%s\", \"threads\": %d, \"devices\": %d, \"completed\": %ld, \"failed\": %ld, "
           "\"seconds\": %.6f, \"per_second\": %.1f, ",
           exchange_names[exchange], nthreads, ndevices, completed, failed, t1 - t0, completed / (t1 - t0));
    if (n)
        printf("\"p50_ms\": %.4f, \"p99_ms\": %.4f, ", all[(n - 1) / 2], all[(long)((n - 1) * 0.99)]);
    else
        printf("\"p50_ms\": null, \"p99_ms\": null, ");
    printf("\"cpu_seconds\": %.6f, \"first_error\": ", c1 - c0);
    if (first_error[0])
        print_json_string(first_error);
    else
        printf("null");
    printf("}\n");
    fflush(stdout);
    if (first_error[0])
        fprintf(stderr, "krb5_load: %ld failed; first error: %s\n", failed, first_error);
    return failed ? 1 : 0;
}
