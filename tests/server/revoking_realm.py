"""A realm opener for tests: the production realm (``tessera.realm.open_realm``), except that
handing out the EAP-PWD password of a device whose id starts with ``revoke-`` revokes it right
after -- the operator's ``tessera-admin revoke`` landing while the device's EAP-PWD exchange is
under way (FreeRADIUS takes the password at the exchange's first round; the exchange ends rounds,
and up to a minute, later). FreeRADIUS loads it through ``realm_opener =
revoking_realm:open_realm`` with this directory on ``python_path``.
"""

from __future__ import annotations

from tessera.realm import open_realm as open_production_realm

PREFIX = "revoke-"


def open_realm(db: str, kek: str):
    realm = open_production_realm(db, kek)
    make_service = realm.service

    def service(server_id: str, *args, **kwargs):
        svc = make_service(server_id, *args, **kwargs)
        password_of = svc.eap_pwd_password

        def eap_pwd_password(device_id: str, now: float) -> str:
            password = password_of(device_id, now)
            if device_id.startswith(PREFIX):
                realm.revoke(device_id, now, "revoked during its EAP-PWD exchange")
            return password

        svc.eap_pwd_password = eap_pwd_password
        return svc

    realm.service = service
    return realm
