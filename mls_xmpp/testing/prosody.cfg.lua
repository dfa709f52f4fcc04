-- Prosody 0.12 (Debian 12 package) on loopback: the MLS Delivery Service used by
-- the integration tests and by `mls-xmpp demo`. Started by mls_xmpp.testing.ProsodyServer:
--   prosody --config <this file> -F
-- Everything comes from the environment (Prosody's ENV_<NAME> lookup), so one file
-- serves any number of instances. Set the same environment for prosodyctl.
--   MLS_XMPP_DIR       state dir (required): data, pidfile, log, admin socket
--   MLS_XMPP_C2S_PORT  client port (default 15222)
--   MLS_XMPP_HTTP_PORT HTTP port for XEP-0363 uploads (default 15280)
--   MLS_XMPP_STORAGE   "internal" (files, default) | "memory" (faster, nothing persists)
--   MLS_XMPP_LOG_LEVEL "info" (default) | "debug" | ...
--   MLS_XMPP_SMACKS    "1": offer XEP-0198 stream management (default "0")
--   MLS_XMPP_WITHOUT   modules to leave out, comma-separated (e.g. "muc_mam"): a server
--                      lacking a feature, for tests of `mls-xmpp doctor`
--   MLS_XMPP_ARCHIVE_EXPIRES how long archives keep stanzas (default "1w", see Retention)
--   MLS_XMPP_SETTINGS  a Lua file of more global options, included before the hosts
--
-- Server limits that matter to MLS are left at Prosody's DEFAULTS, as a real deployment
-- has them, so tests see what users see: c2s_stanza_size_limit (256 KiB),
-- pep_max_items (256), max_archive_query_results (50 per MAM page),
-- archive_expires_after / muc_log_expires_after (1 week), storage_archive_item_limit
-- (10000 per archive with internal storage), muc_room_locking (a new room stays locked
-- until its owner submits the configuration form), http_file_share_size_limit (10 MiB).
local base = assert(ENV_MLS_XMPP_DIR, "set MLS_XMPP_DIR")
local c2s_port = tonumber(ENV_MLS_XMPP_C2S_PORT) or 15222
local http_port = tonumber(ENV_MLS_XMPP_HTTP_PORT) or 15280
local left_out = {}
for name in string.gmatch(ENV_MLS_XMPP_WITHOUT or "", "[^,%s]+") do left_out[name] = true end
local function without(list)             -- `list` minus the modules in MLS_XMPP_WITHOUT
  local kept = {}
  for _, name in ipairs(list) do
    if not left_out[name] then kept[#kept + 1] = name end
  end
  return kept
end

run_as_root = true                       -- CI runs as root; mod_posix refuses otherwise
pidfile = base .. "/prosody.pid"
data_path = base .. "/data"
admin_socket = base .. "/prosody.sock"   -- `prosodyctl shell user create ...` while running
log = {
  { levels = { min = ENV_MLS_XMPP_LOG_LEVEL or "info" }, to = "file",
    filename = base .. "/prosody.log" };
}

interfaces = { "127.0.0.1" }
c2s_ports = { c2s_port }
c2s_direct_tls_ports = { }
http_ports = { http_port }
http_interfaces = { "127.0.0.1" }
https_ports = { }
https_interfaces = { }

local enabled = {
  "roster"; "saslauth"; "disco"; "carbons"; "pep"; "private"; "blocklist";
  "vcard4"; "version"; "uptime"; "time"; "ping"; "mam"; "offline";
  "csi_simple"; "admin_shell"; "admin_socket";
}
if ENV_MLS_XMPP_SMACKS == "1" then        -- XEP-0198: resumption and acks (mod_smacks)
  enabled[#enabled + 1] = "smacks"
end
modules_enabled = without(enabled)
local disabled = { "s2s" }               -- no federation listener in tests
for name in pairs(left_out) do disabled[#disabled + 1] = name end  -- e.g. autoloaded "offline"
modules_disabled = disabled

-- Loopback only: no "tls" module, so no STARTTLS is offered and SCRAM-SHA-1 runs in
-- the clear (slixmpp needs unencrypted_scram = True, see mls_xmpp.testing.connect_client).
c2s_require_encryption = false
certificates = base .. "/certs"          -- empty: keeps Prosody from reading /etc/prosody/certs

network_settings = { nagle = false }     -- TCP_NODELAY: no 40 ms delayed-ACK stalls

authentication = "internal_hashed"
storage = ENV_MLS_XMPP_STORAGE or "internal"
default_archive_policy = true            -- user MAM on (the default is also true in 0.12)
-- Retention (docs/PROTOCOL.md): the accounts' archives (Welcomes) and the rooms'
-- archives (the group's handshake and application messages) expire after this;
-- Prosody's default, written out so a deployment sees the knob.
-- MLS_XMPP_ARCHIVE_EXPIRES overrides it (Prosody's syntax: "1w", "3d", "12h").
archive_expires_after = ENV_MLS_XMPP_ARCHIVE_EXPIRES or "1w"

-- Extra global options of this instance (ProsodyServer(settings=...)), e.g. the limits a
-- benchmark with thousands of devices raises; empty by default.
if ENV_MLS_XMPP_SETTINGS then
  Include(ENV_MLS_XMPP_SETTINGS)
end

VirtualHost "localhost"

Component "conference.localhost" "muc"
  modules_enabled = without({ "muc_mam" })  -- XEP-0313 on rooms; muc_log_by_default is true
  muc_log_expires_after = ENV_MLS_XMPP_ARCHIVE_EXPIRES or "1w"  -- see above

Component "upload.localhost" "http_file_share"
  -- XEP-0363 slots for users of "localhost". upload.localhost need not resolve:
  -- serve on the loopback IP and hand out URLs with it.
  http_host = "127.0.0.1"
  http_external_url = "http://127.0.0.1:" .. http_port .. "/"
