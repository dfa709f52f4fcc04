-- Prosody 0.12 (Debian 12 package): ONE of two federating servers on loopback, for the
-- federation tests. Started by mls_xmpp.testing.federation.Federation (two instances,
-- e.g. a.test on 127.0.0.1 and b.test on 127.0.0.2), each with:
--   prosody --config <this file> -F
-- Everything comes from the environment (Prosody's ENV_<NAME> lookup); set the same
-- environment for prosodyctl (`prosodyctl --config <this file> shell user create ...`).
--   MLS_XMPP_DIR             state dir (required): data, pidfile, log, admin socket, peer.hosts
--   MLS_XMPP_DOMAIN          this server's domain (required), e.g. "a.test"; it serves
--                            <domain>, conference.<domain> (MUC + MAM), upload.<domain>
--   MLS_XMPP_INTERFACE       loopback IP to listen on (default 127.0.0.1)
--   MLS_XMPP_C2S_PORT        client port (default 15222)
--   MLS_XMPP_S2S_PORT        server-to-server port (default 5269)
--   MLS_XMPP_HTTP_PORT       HTTP port for XEP-0363 uploads (default 15280)
--   MLS_XMPP_PEER_DOMAIN     the other server's domain, e.g. "b.test" (optional)
--   MLS_XMPP_PEER_S2S_PORT   the other server's s2s port (with MLS_XMPP_PEER_DOMAIN)
--   MLS_XMPP_STORAGE         "internal" (files, default) | "memory"
--   MLS_XMPP_LOG_LEVEL       "info" (default) | "debug" | ...
--
-- How the two find each other without /etc/hosts or a DNS server: Prosody resolves
-- names with libunbound (Debian package lua-unbound, REQUIRED: without it Prosody falls
-- back to its old resolver, which ignores the `unbound` option below). Its `unbound`
-- option is a private resolver configuration:
--   * hoststxt = <dir>/peer.hosts, one line "<peer IP> <peer domain>" (written by the
--     Python side): the A record of the peer's domain;
--   * a local zone "<peer domain>." of type `redirect` with one SRV record at its apex,
--     "0 0 <peer s2s port> <peer domain>.": a redirect zone answers EVERY name below the
--     apex with the apex's records, so _xmpp-server._tcp.<peer domain> AND
--     _xmpp-server._tcp.conference.<peer domain> (the MUC's own s2s routes) both lead to
--     the peer's s2s port, and conference.<peer domain> resolves to the peer's IP.
--   Thanks to the SRV record the two s2s ports need not be 5269 nor equal: free ports work.
--   Names under "localhost" can NOT be used: unbound's built-in zone answers every
--   *.localhost with 127.0.0.1. ".test" (RFC 6761) is unbound's built-in empty zone, so
--   other *.test names fail fast (NXDOMAIN) instead of reaching real DNS.
--
-- Server-to-server without TLS (loopback only!): no "tls" module, no certificates;
-- servers authenticate each other with dialback (XEP-0220) alone:
--   s2s_require_encryption = false   (0.12's default is true: no s2s without TLS)
--   s2s_secure_auth = false          (the default; true would demand certificates)
-- Server limits are Prosody's defaults, as in prosody.cfg.lua (s2s_stanza_size_limit 512 KiB).
local base = assert(ENV_MLS_XMPP_DIR, "set MLS_XMPP_DIR")
local domain = assert(ENV_MLS_XMPP_DOMAIN, "set MLS_XMPP_DOMAIN")
local ip = ENV_MLS_XMPP_INTERFACE or "127.0.0.1"
local c2s_port = tonumber(ENV_MLS_XMPP_C2S_PORT) or 15222
local s2s_port = tonumber(ENV_MLS_XMPP_S2S_PORT) or 5269
local http_port = tonumber(ENV_MLS_XMPP_HTTP_PORT) or 15280
local peer = ENV_MLS_XMPP_PEER_DOMAIN
local peer_s2s_port = tonumber(ENV_MLS_XMPP_PEER_S2S_PORT) or 5269

run_as_root = true                       -- CI runs as root; mod_posix refuses otherwise
pidfile = base .. "/prosody.pid"
data_path = base .. "/data"
admin_socket = base .. "/prosody.sock"   -- `prosodyctl shell user create ...` while running
log = {
  { levels = { min = ENV_MLS_XMPP_LOG_LEVEL or "info" }, to = "file",
    filename = base .. "/prosody.log" };
}

interfaces = { ip }
c2s_ports = { c2s_port }
c2s_direct_tls_ports = { }
s2s_ports = { s2s_port }
s2s_direct_tls_ports = { }
http_ports = { http_port }
http_interfaces = { ip }
https_ports = { }
https_interfaces = { }

modules_enabled = {
  "roster"; "saslauth"; "disco"; "carbons"; "pep"; "private"; "blocklist";
  "vcard4"; "version"; "uptime"; "time"; "ping"; "mam"; "offline";
  "csi_simple"; "admin_shell"; "admin_socket";
  "dialback";                            -- s2s authentication without certificates
}

c2s_require_encryption = false           -- plaintext SCRAM on loopback, as in prosody.cfg.lua
s2s_require_encryption = false           -- see above: dialback without TLS
s2s_secure_auth = false
certificates = base .. "/certs"          -- empty: keeps Prosody from reading /etc/prosody/certs

if peer then
  unbound = {
    hoststxt = base .. "/peer.hosts";
    options = {
      ["local-zone:"] = peer .. ". redirect";
      ["local-data:"] = peer .. ". 60 IN SRV 0 0 " .. peer_s2s_port .. " " .. peer .. ".";
    };
  }
end

network_settings = { nagle = false }     -- TCP_NODELAY: with Nagle an s2s hop costs ~24 ms

authentication = "internal_hashed"
storage = ENV_MLS_XMPP_STORAGE or "internal"
default_archive_policy = true
archive_expires_after = ENV_MLS_XMPP_ARCHIVE_EXPIRES or "1w"  -- retention: see prosody.cfg.lua

VirtualHost (domain)

Component ("conference." .. domain) "muc"
  modules_enabled = { "muc_mam" }        -- XEP-0313 on rooms; muc_log_by_default is true
  muc_log_expires_after = ENV_MLS_XMPP_ARCHIVE_EXPIRES or "1w"  -- as in prosody.cfg.lua

Component ("upload." .. domain) "http_file_share"
  -- XEP-0363 for users of <domain>; URLs use the IP, which needs no name resolution.
  http_host = ip
  http_external_url = "http://" .. ip .. ":" .. http_port .. "/"
