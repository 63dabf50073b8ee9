-- Tessera peer frames (EtherType 0x88B5) for Wireshark and tshark: a Lua dissector.
--
-- Decodes every message that travels as an Ethernet frame (docs/layouts.md, "Messages" and
-- "Peer records"): PeerHello 32, PeerTicket 33, PeerFinished 34, PeerData 35, PeerAnnounce 36,
-- PeerConfirm 37, PeerFrame 38 and ErrorMessage 15. The RADIUS-only messages (types 1-10)
-- decode too if one ever shows up in a frame, with a warning. Nothing is decrypted: proofs,
-- ciphertexts and GCM tags are shown as bytes.
--
--   tshark -X lua_script:wireshark/tessera.lua -r capture.pcap -Y tessera
--   tshark -X lua_script:wireshark/tessera.lua -r capture.pcap -Y tessera -T fields \
--          -e tessera.type -e tessera.session_id -e tessera.seq
--
-- With the project's RADIUS dictionary loaded (tools/wireshark-profile), the message carried in
-- a RADIUS packet's Tessera-Message / Tessera-Reply attributes decodes too (tessera_radius,
-- at the end of this file).
--
-- Fields (display filter names) are listed in wireshark/README.md. Every read is bounds
-- checked: a short, over-long or otherwise malformed frame gets expert info (tessera.truncated,
-- tessera.trailing, tessera.too_long, ...) and never a Lua error.

local ETHERTYPE = 0x88B5
local VERSION = 1
local MAX_MESSAGE = 4000
local TAG_LEN = 16
local ETH_HEADER = 14

local tessera = Proto("tessera", "Tessera")

local TYPE_NAMES = {
    [1] = "RegisterRequest", [2] = "RegisterReply", [3] = "AuthRequest", [4] = "TicketReply",
    [5] = "RenewRequest", [6] = "SessionRequest", [7] = "SessionReply", [8] = "SignedError",
    [9] = "RevocationQuery", [10] = "RevocationList", [15] = "ErrorMessage",
    [32] = "PeerHello", [33] = "PeerTicket", [34] = "PeerFinished", [35] = "PeerData",
    [36] = "PeerAnnounce", [37] = "PeerConfirm", [38] = "PeerFrame",
}
local FRAME_TYPES = { [15] = true, [32] = true, [33] = true, [34] = true, [35] = true,
                      [36] = true, [37] = true, [38] = true }

-- the core's error taxonomy (tessera/errors.py; radius/dictionary.tessera's Tessera-Error values)
local ERROR_NAMES = {
    [1] = "error", [2] = "malformed", [3] = "unsupported-version", [4] = "invalid-ticket",
    [5] = "unknown-key-version", [6] = "wrong-realm", [7] = "unknown-device", [8] = "revoked",
    [9] = "not-registered", [10] = "superseded", [11] = "expired", [12] = "not-yet-valid",
    [13] = "clock-skew", [14] = "bad-proof", [15] = "replay", [16] = "wrong-server",
    [17] = "wrong-peer", [18] = "bad-state", [19] = "bad-certificate", [20] = "internal-error",
    [21] = "wrong-identity", [22] = "over-quota", [23] = "registry-unavailable",
    [24] = "server-clock",
}

-- Each message's fields in order (tessera/message.py FIELDS). Kinds: id (u8 length, <= 64
-- bytes UTF-8), text (u8 length, <= 255), u16, u64, time (a u64 of Unix seconds), epoch (a
-- u64 shown in hex), nonce 16, mac 32, sig 64, sid 8, hw 6, blob (u16 length, <= 1024; the
-- third element says what is inside), sealed (the rest: ciphertext and GCM tag), revoked.
local LAYOUTS = {
    [1] = { { "realm", "id" }, { "device_id", "id" }, { "server_id", "id" }, { "timestamp", "time" },
            { "nonce", "nonce" }, { "signature", "sig" } },
    [2] = { { "realm", "id" }, { "device_id", "id" }, { "request_nonce", "nonce" },
            { "drt", "blob", "ticket" }, { "device_part", "blob", "ecies" }, { "signature", "sig" } },
    [3] = { { "realm", "id" }, { "device_id", "id" }, { "server_id", "id" }, { "timestamp", "time" },
            { "nonce", "nonce" }, { "drt", "blob", "ticket" }, { "mac", "mac" } },
    [4] = { { "realm", "id" }, { "device_id", "id" }, { "request_nonce", "nonce" },
            { "tgt", "blob", "ticket" }, { "device_part", "blob", "aead" } },
    [5] = { { "realm", "id" }, { "device_id", "id" }, { "server_id", "id" }, { "timestamp", "time" },
            { "nonce", "nonce" }, { "tgt", "blob", "ticket" }, { "mac", "mac" } },
    [6] = { { "realm", "id" }, { "device_id", "id" }, { "server_id", "id" }, { "timestamp", "time" },
            { "nonce", "nonce" }, { "tgt", "blob", "ticket" }, { "hello", "blob", "message" },
            { "mac", "mac" } },
    [7] = { { "realm", "id" }, { "initiator", "id" }, { "responder", "id" }, { "initiator_nonce", "nonce" },
            { "request_nonce", "nonce" }, { "not_after", "time" }, { "part_responder", "blob", "aead" },
            { "part_initiator", "blob", "aead" } },
    [8] = { { "realm", "id" }, { "device_id", "id" }, { "server_id", "id" }, { "request_nonce", "nonce" },
            { "code", "u16" }, { "server_time", "time" }, { "detail", "text" }, { "signature", "sig" } },
    [9] = { { "realm", "id" }, { "device_id", "id" }, { "server_id", "id" }, { "timestamp", "time" },
            { "nonce", "nonce" } },
    [10] = { { "realm", "id" }, { "device_id", "id" }, { "server_id", "id" }, { "request_nonce", "nonce" },
             { "issued_at", "time" }, { "complete_since", "time" }, { "revoked", "revoked" },
             { "signature", "sig" } },
    [15] = { { "code", "u16" }, { "server_time", "time" }, { "detail", "text" } },
    [32] = { { "realm", "id" }, { "initiator", "id" }, { "responder", "id" }, { "initiator_hw", "hw" },
             { "timestamp", "time" }, { "nonce", "nonce" }, { "tgt", "blob", "ticket" }, { "mac", "mac" } },
    [33] = { { "realm", "id" }, { "initiator", "id" }, { "responder", "id" }, { "initiator_nonce", "nonce" },
             { "responder_nonce", "nonce" }, { "responder_hw", "hw" }, { "not_after", "time" },
             { "part_initiator", "blob", "aead" }, { "finished", "mac" } },
    [34] = { { "realm", "id" }, { "initiator", "id" }, { "responder", "id" }, { "initiator_nonce", "nonce" },
             { "finished", "mac" } },
    [35] = { { "session_id", "sid" }, { "seq", "u64" }, { "sealed", "sealed" } },
    [36] = { { "realm", "id" }, { "device_id", "id" }, { "epoch", "epoch" } },
    [37] = { { "realm", "id" }, { "initiator", "id" }, { "responder", "id" }, { "initiator_nonce", "nonce" },
             { "confirm", "mac" } },
    [38] = { { "session_id", "sid" }, { "seq", "u64" }, { "sealed", "sealed" } },
}

local FIXED = { u16 = 2, u64 = 8, time = 8, epoch = 8, nonce = 16, mac = 32, sig = 64, sid = 8, hw = 6 }
local BOUND = { id = 64, text = 255, blob = 1024 }

-- fields ---------------------------------------------------------------------------------------

local pf = {
    version = ProtoField.uint8("tessera.version", "Version", base.DEC),
    type = ProtoField.uint8("tessera.type", "Type", base.DEC, TYPE_NAMES),
    id_len = ProtoField.uint8("tessera.id_len", "Length", base.DEC),
    text_len = ProtoField.uint8("tessera.text_len", "Length", base.DEC),
    blob_len = ProtoField.uint16("tessera.blob_len", "Length", base.DEC),
    -- ids and text
    realm = ProtoField.string("tessera.realm", "Realm", base.UNICODE),
    device_id = ProtoField.string("tessera.device_id", "Device id", base.UNICODE),
    server_id = ProtoField.string("tessera.server_id", "Server id", base.UNICODE),
    initiator = ProtoField.string("tessera.initiator", "Initiator", base.UNICODE),
    responder = ProtoField.string("tessera.responder", "Responder", base.UNICODE),
    detail = ProtoField.string("tessera.detail", "Detail", base.UNICODE),
    -- integers and times
    code = ProtoField.uint16("tessera.code", "Error code", base.DEC, ERROR_NAMES),
    seq = ProtoField.uint64("tessera.seq", "Sequence number", base.DEC),
    epoch = ProtoField.uint64("tessera.epoch", "Epoch", base.HEX),
    timestamp = ProtoField.uint64("tessera.timestamp", "Timestamp", base.DEC),
    not_after = ProtoField.uint64("tessera.not_after", "Not after", base.DEC),
    server_time = ProtoField.uint64("tessera.server_time", "Server time", base.DEC),
    issued_at = ProtoField.uint64("tessera.issued_at", "Issued at", base.DEC),
    complete_since = ProtoField.uint64("tessera.complete_since", "Complete since", base.DEC),
    revoked_at = ProtoField.uint64("tessera.revoked_at", "Revoked at", base.DEC),
    revoked_count = ProtoField.uint16("tessera.revoked_count", "Revoked devices", base.DEC),
    revoked = ProtoField.none("tessera.revoked", "Revoked"),
    -- hardware addresses
    initiator_hw = ProtoField.ether("tessera.initiator_hw", "Initiator hw address"),
    responder_hw = ProtoField.ether("tessera.responder_hw", "Responder hw address"),
    -- nonces, proofs, session id
    nonce = ProtoField.bytes("tessera.nonce", "Nonce"),
    request_nonce = ProtoField.bytes("tessera.request_nonce", "Request nonce"),
    initiator_nonce = ProtoField.bytes("tessera.initiator_nonce", "Initiator nonce"),
    responder_nonce = ProtoField.bytes("tessera.responder_nonce", "Responder nonce"),
    mac = ProtoField.bytes("tessera.mac", "MAC (authenticator)"),
    finished = ProtoField.bytes("tessera.finished", "Finished MAC"),
    confirm = ProtoField.bytes("tessera.confirm", "Confirm MAC"),
    signature = ProtoField.bytes("tessera.signature", "Signature (ECDSA P-256, r||s)"),
    session_id = ProtoField.bytes("tessera.session_id", "Session id"),
    -- blobs
    tgt = ProtoField.bytes("tessera.tgt", "TGT (service-sealed)"),
    drt = ProtoField.bytes("tessera.drt", "DRT (service-sealed)"),
    device_part = ProtoField.bytes("tessera.device_part", "Device part (sealed)"),
    part_initiator = ProtoField.bytes("tessera.part_initiator", "Initiator's session part (sealed)"),
    part_responder = ProtoField.bytes("tessera.part_responder", "Responder's session part (sealed)"),
    hello = ProtoField.bytes("tessera.hello", "Forwarded PeerHello"),
    -- inside a sealed blob or record
    ticket_kind = ProtoField.uint8("tessera.ticket.kind", "Ticket kind", base.DEC,
                                   { [1] = "DRT service part", [2] = "TGT service part" }),
    ticket_version = ProtoField.uint8("tessera.ticket.version", "Ticket version", base.DEC),
    ticket_kvno = ProtoField.uint32("tessera.ticket.kvno", "Service key version (kvno)", base.DEC),
    aead_nonce = ProtoField.bytes("tessera.aead_nonce", "AEAD nonce"),
    ephemeral = ProtoField.bytes("tessera.ephemeral", "Ephemeral point (compressed)"),
    sealed = ProtoField.bytes("tessera.sealed", "Sealed record"),
    ciphertext = ProtoField.bytes("tessera.ciphertext", "Ciphertext (AES-256-GCM, not decrypted)"),
    ciphertext_len = ProtoField.uint32("tessera.ciphertext_len", "Ciphertext length", base.DEC),
    tag = ProtoField.bytes("tessera.tag", "GCM tag"),
    inner_len = ProtoField.uint32("tessera.inner_len", "Encrypted inner Ethernet frame length", base.DEC),
    -- the rest
    length = ProtoField.uint32("tessera.length", "Message length", base.DEC),
    padding = ProtoField.bytes("tessera.padding", "Ethernet padding"),
    trailing = ProtoField.bytes("tessera.trailing_bytes", "Trailing bytes"),
    undecoded = ProtoField.bytes("tessera.undecoded", "Not decoded"),
}
local field_list = {}
for _, f in pairs(pf) do field_list[#field_list + 1] = f end
tessera.fields = field_list

local ef = {
    truncated = ProtoExpert.new("tessera.truncated", "Truncated Tessera message",
                                expert.group.MALFORMED, expert.severity.ERROR),
    trailing = ProtoExpert.new("tessera.trailing", "Bytes after the last field",
                               expert.group.MALFORMED, expert.severity.ERROR),
    too_long = ProtoExpert.new("tessera.too_long", "Field longer than its bound",
                               expert.group.MALFORMED, expert.severity.ERROR),
    not_utf8 = ProtoExpert.new("tessera.not_utf8", "Text is not UTF-8",
                               expert.group.MALFORMED, expert.severity.ERROR),
    version = ProtoExpert.new("tessera.version.unsupported", "Unsupported Tessera version",
                              expert.group.PROTOCOL, expert.severity.ERROR),
    unknown_type = ProtoExpert.new("tessera.type.unknown", "Unknown Tessera message type",
                                   expert.group.MALFORMED, expert.severity.ERROR),
    not_frame = ProtoExpert.new("tessera.type.not_frame", "A RADIUS-only message in a frame",
                                expert.group.PROTOCOL, expert.severity.WARN),
    oversize = ProtoExpert.new("tessera.oversize", "Message over 4000 bytes",
                               expert.group.MALFORMED, expert.severity.ERROR),
    short_tag = ProtoExpert.new("tessera.sealed.short", "Sealed part shorter than the GCM tag",
                                expert.group.MALFORMED, expert.severity.ERROR),
    short_inner = ProtoExpert.new("tessera.inner.short", "Inner frame shorter than an Ethernet header",
                                  expert.group.MALFORMED, expert.severity.ERROR),
    seq_zero = ProtoExpert.new("tessera.seq.zero", "Sequence number 0 is never sent",
                               expert.group.SEQUENCE, expert.severity.WARN),
    internal = ProtoExpert.new("tessera.internal", "Dissector error (please report)",
                               expert.group.UNDECODED, expert.severity.ERROR),
}
local expert_list = {}
for _, e in pairs(ef) do expert_list[#expert_list + 1] = e end
tessera.experts = expert_list

-- helpers --------------------------------------------------------------------------------------

-- Lua 5.2 has no utf8 library: a strict UTF-8 check (no overlongs, no surrogates, <= U+10FFFF)
local function valid_utf8(s)
    local i, n = 1, #s
    while i <= n do
        local c = s:byte(i)
        local need, lo, hi = 0, 0x80, 0xBF
        if c < 0x80 then need = 0
        elseif c >= 0xC2 and c <= 0xDF then need = 1
        elseif c == 0xE0 then need, lo = 2, 0xA0
        elseif c == 0xED then need, hi = 2, 0x9F
        elseif c >= 0xE1 and c <= 0xEF then need = 2
        elseif c == 0xF0 then need, lo = 3, 0x90
        elseif c >= 0xF1 and c <= 0xF3 then need = 3
        elseif c == 0xF4 then need, hi = 3, 0x8F
        else return false end
        if i + need > n then return false end
        for k = 1, need do
            local b = s:byte(i + k)
            if k == 1 then
                if b < lo or b > hi then return false end
            elseif b < 0x80 or b > 0xBF then return false end
        end
        i = i + need + 1
    end
    return true
end

-- a string for the Info column: control characters, and every non-ASCII byte of text that is
-- not UTF-8, as \xNN (the tree shows the field itself)
local function printable(s, utf8_ok)
    local pattern = utf8_ok and "[%z\1-\31\127]" or "[%z\1-\31\127-\255]"
    return (s:gsub(pattern, function(c) return string.format("\\x%02x", c:byte()) end))
end

local function utc(secs)
    -- a u64 of seconds as a date; os.date refuses times it cannot represent
    local ok, text = pcall(os.date, "!%Y-%m-%d %H:%M:%S UTC", secs)
    if ok and text then return text end
    return "out of range"
end

local function hex(tvb, pos, n)
    return tostring(tvb(pos, n):bytes()):lower()
end

-- A cursor over one message: pulls fields into the tree, stops (returns nil) at the first
-- field that does not fit, with expert info on the item that could not be read.
local Cursor = {}
Cursor.__index = Cursor

-- where: "frame" (an 0x88B5 payload), "radius" (a Tessera-Message / -Reply value) or "nested"
-- (a PeerHello forwarded inside a SessionRequest)
local function cursor(tvb, pos, limit, tree, where)
    return setmetatable({ tvb = tvb, pos = pos, limit = limit, tree = tree, bad = false,
                          where = where or "frame" }, Cursor)
end

function Cursor:left() return self.limit - self.pos end

function Cursor:short(what, need)
    local have = self:left()
    local item
    if have > 0 then
        item = self.tree:add(self.tvb(self.pos, have), what .. ": truncated")
    else
        item = self.tree
    end
    item:add_proto_expert_info(ef.truncated, string.format(
        "Truncated: %s needs %d bytes, %d left", what, need, have))
    self.bad = true
    self.pos = self.limit
    return nil
end

function Cursor:take(n, what)
    if n < 0 or self:left() < n then return self:short(what, n) end
    local pos = self.pos
    self.pos = pos + n
    return pos
end

-- one field of `kind`; returns a value for the Info column (or true), nil if it did not fit
function Cursor:field(name, kind, inside, tree)
    tree = tree or self.tree
    local tvb = self.tvb
    if kind == "id" or kind == "text" then
        local at = self:take(1, name .. " length")
        if not at then return nil end
        local n = tvb(at, 1):uint()
        local body = self:take(n, name)
        if not body then return nil end
        local item = tree:add_packet_field(pf[name], tvb(body, n), ENC_UTF_8)
        item:add(kind == "id" and pf.id_len or pf.text_len, tvb(at, 1))
        local s = tvb:raw(body, n)
        if n > BOUND[kind] then
            item:add_proto_expert_info(ef.too_long, string.format("%s is %d bytes, at most %d", name, n, BOUND[kind]))
            self.bad = true
        end
        local utf8_ok = valid_utf8(s)
        if not utf8_ok then
            item:add_proto_expert_info(ef.not_utf8, name .. " is not UTF-8")
            self.bad = true
        end
        return printable(s, utf8_ok)
    elseif kind == "blob" then
        local at = self:take(2, name .. " length")
        if not at then return nil end
        local n = tvb(at, 2):uint()
        local body = self:take(n, name)
        if not body then return nil end
        local item = tree:add(pf[name], tvb(body, n))
        item:add(pf.blob_len, tvb(at, 2))
        if n > BOUND.blob then
            item:add_proto_expert_info(ef.too_long, string.format("%s is %d bytes, at most %d", name, n, BOUND.blob))
            self.bad = true
        end
        self:inside(inside, body, n, item)
        return n
    elseif kind == "sealed" then
        local n = self:left()
        local item = tree:add(pf.sealed, tvb(self.pos, n > 0 and n or 0))
        if n < TAG_LEN then
            item:add_proto_expert_info(ef.short_tag, string.format(
                "Sealed part is %d bytes, shorter than the %d-byte GCM tag", n, TAG_LEN))
            self.bad = true
            self.pos = self.limit
            return nil
        end
        local ct = n - TAG_LEN
        item:add(pf.ciphertext_len, ct):set_generated()
        if ct > 0 then item:add(pf.ciphertext, tvb(self.pos, ct)) end
        item:add(pf.tag, tvb(self.pos + ct, TAG_LEN))
        item:set_text(string.format("Sealed record: %d bytes of ciphertext, %d-byte GCM tag", ct, TAG_LEN))
        self.pos = self.limit
        return ct
    elseif kind == "revoked" then
        local at = self:take(2, "revoked count")
        if not at then return nil end
        local count = tvb(at, 2):uint()
        local item = tree:add(pf.revoked_count, tvb(at, 2))
        if count > 128 then
            item:add_proto_expert_info(ef.too_long, string.format("%d revoked devices listed, at most 128", count))
            self.bad = true
        end
        for _ = 1, count do
            local start = self.pos
            local entry = item:add(pf.revoked, tvb(start, 0))
            local dev = self:field("device_id", "id", nil, entry)
            if not dev then return nil end
            local t = self:field("revoked_at", "time", nil, entry)
            if not t then return nil end
            entry:set_len(self.pos - start)
            entry:set_text(string.format("Revoked: %s at %s", dev, t))
        end
        return count
    else
        local n = FIXED[kind]
        local at = self:take(n, name)
        if not at then return nil end
        local r = tvb(at, n)
        if kind == "time" then
            local v = r:uint64()
            local item = tree:add(pf[name], r)
            local text = utc(v:tonumber())
            item:append_text(" (" .. text .. ")")
            return text
        elseif kind == "u64" or kind == "epoch" then
            tree:add(pf[name], r)
            return r:uint64()
        elseif kind == "u16" then
            tree:add(pf[name], r)
            return r:uint()
        elseif kind == "hw" then
            tree:add(pf[name], r)
            return tostring(r:ether())
        else -- nonce, mac, sig, sid
            tree:add(pf[name], r)
            return hex(tvb, at, n)
        end
    end
end

-- what is inside a blob: a service-sealed ticket, an AEAD, an ECIES part, a nested message
function Cursor:inside(what, body, n, item)
    local tvb = self.tvb
    if what == "ticket" then
        if n < 6 + 12 + TAG_LEN then return end
        item:add(pf.ticket_kind, tvb(body, 1))
        item:add(pf.ticket_version, tvb(body + 1, 1))
        item:add(pf.ticket_kvno, tvb(body + 2, 4))
        body, n = body + 6, n - 6
        what = "aead"
    end
    if what == "aead" or what == "ecies" then
        local head = (what == "aead") and 12 or 33
        if n < head + TAG_LEN then return end
        item:add(what == "aead" and pf.aead_nonce or pf.ephemeral, tvb(body, head))
        local ct = n - head - TAG_LEN
        item:add(pf.ciphertext_len, ct):set_generated()
        if ct > 0 then item:add(pf.ciphertext, tvb(body + head, ct)) end
        item:add(pf.tag, tvb(body + head + ct, TAG_LEN))
    elseif what == "message" then
        local sub = item:add(tessera, tvb(body, n))
        sub:set_text("Forwarded message")
        local c = cursor(tvb, body, body + n, sub, "nested")
        local _, info = c:message()
        sub:append_text(": " .. (info or "?"))
        if c.pos < c.limit then
            sub:add(pf.trailing, tvb(c.pos, c.limit - c.pos)):add_proto_expert_info(ef.trailing,
                string.format("%d bytes after the last field", c.limit - c.pos))
        end
        if c.bad then self.bad = true end
    end
end

-- the rest of a message this dissector cannot read (another version, an unknown type)
function Cursor:undecoded()
    if self:left() > 0 then self.tree:add(pf.undecoded, self.tvb(self.pos, self:left())) end
    self.pos = self.limit
end

-- the message from the cursor's position to its limit; returns (type, info text)
function Cursor:message()
    local tvb, tree = self.tvb, self.tree
    local size = self:left()
    tree:add(pf.length, size):set_generated()
    if size > MAX_MESSAGE then
        tree:add_proto_expert_info(ef.oversize, string.format("Message of %d bytes, at most %d", size, MAX_MESSAGE))
    end
    local at = self:take(1, "version")
    if not at then return nil, "[truncated: empty]" end
    local version = tvb(at, 1):uint()
    local vitem = tree:add(pf.version, tvb(at, 1))
    at = self:take(1, "type")
    if not at then return nil, "[truncated before the type]" end
    local mtype = tvb(at, 1):uint()
    local titem = tree:add(pf.type, tvb(at, 1))
    local name = TYPE_NAMES[mtype] or string.format("type %d", mtype)
    if version ~= VERSION then
        vitem:add_proto_expert_info(ef.version, string.format("Version %d, this dissector reads %d", version, VERSION))
        self:undecoded()
        return mtype, string.format("version %d %s (not decoded)", version, name)
    end
    local layout = LAYOUTS[mtype]
    if not layout then
        titem:add_proto_expert_info(ef.unknown_type, string.format("Unknown message type %d", mtype))
        self:undecoded()
        return mtype, string.format("unknown type %d", mtype)
    end
    if self.where == "frame" and not FRAME_TYPES[mtype] then
        titem:add_proto_expert_info(ef.not_frame, name .. " travels in RADIUS, not in peer frames")
    end
    local v = {}
    for _, f in ipairs(layout) do
        local value = self:field(f[1], f[2], f[3])
        if value == nil then break end
        v[f[1]] = value
    end
    local info = name
    if v.initiator and v.responder then
        info = string.format("%s %s → %s", name, v.initiator, v.responder)
    elseif v.device_id then
        info = string.format("%s %s", name, v.device_id)
    end
    if v.realm then info = info .. " (" .. v.realm .. ")" end
    if mtype == 36 and v.epoch then
        info = info .. " epoch 0x" .. v.epoch:tohex()
    elseif (mtype == 35 or mtype == 38) and v.seq then
        info = string.format("%s sid=%s seq=%s", name, v.session_id, tostring(v.seq))
        if v.sealed then info = info .. string.format(" len=%d", v.sealed) end
        if v.seq == UInt64.new(0) then
            tree:add_proto_expert_info(ef.seq_zero)
        end
        if mtype == 38 and v.sealed then
            tree:add(pf.inner_len, v.sealed):set_generated()
            if v.sealed < ETH_HEADER then
                tree:add_proto_expert_info(ef.short_inner, string.format(
                    "Inner frame of %d bytes, an Ethernet header alone is %d", v.sealed, ETH_HEADER))
            end
        end
    elseif (mtype == 15 or mtype == 8) and v.code then
        info = string.format("%s %d (%s)", info, v.code, ERROR_NAMES[v.code] or "unknown code")
        if v.detail and #v.detail > 0 then info = info .. ": " .. v.detail end
    end
    if self.bad then info = info .. " [malformed]" end
    return mtype, info
end

-- the dissector ---------------------------------------------------------------------------------

function tessera.dissector(tvb, pinfo, tree)
    local len = tvb:len()
    pinfo.cols.protocol:set("Tessera")
    local root = tree:add(tessera, tvb(0, len))
    local c = cursor(tvb, 0, len, root)
    local ok, mtype, info = pcall(Cursor.message, c)
    if not ok then
        root:add_proto_expert_info(ef.internal, "Dissector error: " .. tostring(mtype))
        pinfo.cols.info:set("Tessera [dissector error]")
        return math.max(len, 1)
    end
    if c.pos < len then
        -- bytes after the last field: the decoder refuses them; a frame padded to Ethernet's
        -- 60-byte minimum (46 bytes of payload) with zeros is padding, not part of the message
        local rest = tvb:raw(c.pos, len - c.pos)
        if len <= 46 and not rest:find("[^%z]") then
            root:add(pf.padding, tvb(c.pos, len - c.pos))
        else
            root:add(pf.trailing, tvb(c.pos, len - c.pos)):add_proto_expert_info(ef.trailing,
                string.format("%d bytes after the last field", len - c.pos))
            info = (info or "") .. " [trailing bytes]"
        end
    end
    root:append_text(", " .. (info or "?"))
    pinfo.cols.info:set(info or "Tessera")
    -- the bytes taken; at least 1, since 0 would tell the ethertype table "not mine" (an empty
    -- payload is a truncated Tessera frame, and it says so)
    return math.max(len, 1)
end

DissectorTable.get("ethertype"):add(ETHERTYPE, tessera)

-- Tessera messages inside RADIUS ---------------------------------------------------------------
-- With the project's RADIUS dictionary loaded (tools/wireshark-profile), a request's
-- Tessera-Message and a reply's Tessera-Reply are one message split over several attributes
-- (each <= 247 bytes): their values, concatenated in order, are decoded here as a message, in a
-- "Tessera message in RADIUS" subtree (filter: tessera_radius; its fields are the tessera.* ones)
-- and a tab of its own. Without the dictionary these fields do not exist and nothing is added.

local tessera_radius = Proto("tessera_radius", "Tessera message in RADIUS")
local RADIUS_ATTRS = {}
for _, a in ipairs({ { "radius.Tessera_Message", "Tessera-Message" }, { "radius.Tessera_Reply", "Tessera-Reply" } }) do
    local ok, field = pcall(Field.new, a[1])
    if ok then RADIUS_ATTRS[#RADIUS_ATTRS + 1] = { field = field, name = a[2] } end
end

local function radius_message(ba, name, tree)
    local sub = ba:tvb(name)
    local len = sub:len()
    local root = tree:add(tessera_radius, sub(0, len))
    root:append_text(" (" .. name .. ")")
    local c = cursor(sub, 0, len, root, "radius")
    local ok, mtype, info = pcall(Cursor.message, c)
    if not ok then
        root:add_proto_expert_info(ef.internal, "Dissector error: " .. tostring(mtype))
        return
    end
    if c.pos < len then
        root:add(pf.trailing, sub(c.pos, len - c.pos)):add_proto_expert_info(ef.trailing,
            string.format("%d bytes after the last field", len - c.pos))
        info = (info or "") .. " [trailing bytes]"
    end
    root:append_text(": " .. (info or "?"))
    return info
end

function tessera_radius.dissector(tvb, pinfo, tree)
    for _, a in ipairs(RADIUS_ATTRS) do
        local values = { a.field() }
        if #values > 0 then
            local ba = ByteArray.new()
            for _, fi in ipairs(values) do
                local ok, bytes = pcall(function() return fi.range:bytes() end)
                if ok and bytes then ba:append(bytes) end
            end
            if ba:len() > 0 then
                local info = radius_message(ba, a.name, tree)
                if info then pinfo.cols.info:append(" [" .. info .. "]") end
            end
        end
    end
end

if #RADIUS_ATTRS > 0 then register_postdissector(tessera_radius) end
