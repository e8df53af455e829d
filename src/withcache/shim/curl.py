"""What the shim knows about curl: its options (curl 7.88) and their meaning.

The option names and which take an argument come from `curl --help all`
(test_option_tables.py compares them with the installed curl), plus a few
hidden aliases curl still accepts (ftp-ssl, ftp-ssl-reqd, krb4, test-event)
so that abbreviations resolve as curl resolves them. Booleans are listed by
the name curl matches (`--no-buffer` is `buffer` negated). An option missing
here makes the shim pass the command through untouched, never guess.
"""

from __future__ import annotations

from withcache.shim.scan import ARG, BOOL, CURL, FLAG, Table
from withcache.shim.tool import Tool

_TAKES_ARGUMENT = """
    abstract-unix-socket alt-svc aws-sigv4 cacert capath cert cert-type ciphers config
    connect-timeout connect-to continue-at cookie cookie-jar create-file-mode crlfile curves
    data data-ascii data-binary data-raw data-urlencode delegation dns-interface
    dns-ipv4-addr dns-ipv6-addr dns-servers doh-url dump-header egd-file engine etag-compare
    etag-save expect100-timeout form form-string ftp-account ftp-alternative-to-user
    ftp-method ftp-port ftp-ssl-ccc-mode happy-eyeballs-timeout-ms header hostpubmd5
    hostpubsha256 hsts interface json keepalive-time key key-type krb krb4 libcurl
    limit-rate local-port login-options mail-auth mail-from mail-rcpt max-filesize
    max-redirs max-time netrc-file noproxy oauth2-bearer output output-dir parallel-max pass
    pinnedpubkey preproxy proto proto-default proto-redir proxy proxy-cacert proxy-capath
    proxy-cert proxy-cert-type proxy-ciphers proxy-crlfile proxy-header proxy-key
    proxy-key-type proxy-pass proxy-pinnedpubkey proxy-service-name proxy-tls13-ciphers
    proxy-tlsauthtype proxy-tlspassword proxy-tlsuser proxy-user proxy1.0 pubkey quote
    random-file range rate referer request request-target resolve retry retry-delay
    retry-max-time sasl-authzid service-name socks4 socks4a socks5 socks5-gssapi-service
    socks5-hostname speed-limit speed-time stderr telnet-option tftp-blksize time-cond
    tls-max tls13-ciphers tlsauthtype tlspassword tlsuser trace trace-ascii unix-socket
    upload-file url url-query user user-agent write-out
"""
_BOOLEANS = """
    alpn anyauth append basic buffer cert-status clobber compressed compressed-ssh
    create-dirs crlf digest disable disable-eprt disable-epsv disallow-username-in-url
    doh-cert-status doh-insecure fail fail-early fail-with-body false-start form-escape
    ftp-create-dirs ftp-pasv ftp-pret ftp-skip-pasv-ip ftp-ssl ftp-ssl-ccc ftp-ssl-control
    ftp-ssl-reqd get globoff haproxy-protocol head help http0.9 ignore-content-length
    include insecure junk-session-cookies keepalive list-only location location-trusted
    mail-rcpt-allowfails manual metalink negotiate netrc netrc-optional npn ntlm ntlm-wb
    parallel parallel-immediate path-as-is post301 post302 post303 progress-bar
    progress-meter proxy-anyauth proxy-basic proxy-digest proxy-insecure proxy-negotiate
    proxy-ntlm proxy-ssl-allow-beast proxy-ssl-auto-client-cert proxytunnel raw
    remote-header-name remote-name remote-name-all remote-time remove-on-error
    retry-all-errors retry-connrefused sasl-ir sessionid show-error silent socks5-basic
    socks5-gssapi socks5-gssapi-nec ssl ssl-allow-beast ssl-auto-client-cert ssl-no-revoke
    ssl-reqd ssl-revoke-best-effort styled-output suppress-connect-headers tcp-fastopen
    tcp-nodelay test-event tftp-no-options tr-encoding trace-time use-ascii verbose version
    xattr
"""
_FLAGS = """
    http1.0 http1.1 http2 http2-prior-knowledge http3 http3-only ipv4 ipv6 next proxy-tlsv1
    sslv2 sslv3 tlsv1 tlsv1.0 tlsv1.1 tlsv1.2 tlsv1.3
"""
_SHORT = {
    "0": "http1.0", "1": "tlsv1", "2": "sslv2", "3": "sslv3", "4": "ipv4", "6": "ipv6",
    ":": "next", "#": "progress-bar",
    "a": "append", "A": "user-agent", "b": "cookie", "B": "use-ascii", "c": "cookie-jar",
    "C": "continue-at", "d": "data", "D": "dump-header", "e": "referer", "E": "cert",
    "f": "fail", "F": "form", "g": "globoff", "G": "get", "h": "help", "H": "header",
    "i": "include", "I": "head", "j": "junk-session-cookies", "J": "remote-header-name",
    "k": "insecure", "K": "config", "l": "list-only", "L": "location", "m": "max-time",
    "M": "manual", "n": "netrc", "N": "buffer", "o": "output", "O": "remote-name",
    "p": "proxytunnel", "P": "ftp-port", "q": "disable", "Q": "quote", "r": "range",
    "R": "remote-time", "s": "silent", "S": "show-error", "t": "telnet-option",
    "T": "upload-file", "u": "user", "U": "proxy-user", "v": "verbose", "V": "version",
    "w": "write-out", "x": "proxy", "X": "request", "y": "speed-time", "Y": "speed-limit",
    "z": "time-cond", "Z": "parallel",
}  # fmt: skip

TABLE = Table(
    style=CURL,
    long={
        **dict.fromkeys(_TAKES_ARGUMENT.split(), ARG),
        **dict.fromkeys(_BOOLEANS.split(), BOOL),
        **dict.fromkeys(_FLAGS.split(), FLAG),
    },
    short=_SHORT,
)

_BODY = "sends a request body"
_RESOLVE = "decides itself where the origin host connects"
_NO_TRANSFER = "makes no transfer"
_TLS_LIMIT = "limits TLS, which an https cache-host may not meet"

TOOL = Tool(
    name="curl",
    table=TABLE,
    server_env="CURLWITHCACHE_SERVER",
    real_env="REAL_CURL",
    url_options=frozenset({"url"}),
    pass_through={
        **dict.fromkeys(
            ["data", "data-ascii", "data-binary", "data-raw", "data-urlencode", "json"], _BODY
        ),
        "form": "sends a form",
        "form-string": "sends a form",
        "upload-file": "uploads a file",
        "request-target": "asks for another request target",
        "url-query": "adds to the URL's query",
        "path-as-is": "sends dot segments as written",
        "resolve": _RESOLVE,
        "connect-to": _RESOLVE,
        "doh-url": _RESOLVE,
        "dns-servers": _RESOLVE,
        "dns-interface": _RESOLVE,
        "dns-ipv4-addr": _RESOLVE,
        "dns-ipv6-addr": _RESOLVE,
        "unix-socket": "connects through a Unix socket",
        "abstract-unix-socket": "connects through a Unix socket",
        "haproxy-protocol": "sends a PROXY protocol header",
        "http2-prior-knowledge": "speaks HTTP/2 without asking",
        "http3": "speaks HTTP/3",
        "http3-only": "speaks HTTP/3",
        "include": "writes response headers into the output",
        "xattr": "records the URL in file attributes",
        "libcurl": "writes a program that contains the URL",
        "pinnedpubkey": "pins the origin's TLS key",
        "aws-sigv4": "signs the request for the origin host",
        "config": "reads more options and URLs from a file (-K)",
        "help": _NO_TRANSFER,
        "manual": _NO_TRANSFER,
        "version": _NO_TRANSFER,
    },
    https_pass_through=dict.fromkeys(
        ["tls-max", "ciphers", "tls13-ciphers", "curves", "cert-status", "sslv2", "sslv3"],
        _TLS_LIMIT,
    ),
    # --proto limits every transfer; --proto-redir the redirects a hit may take
    # (--redirect-hits sends one to the object store, taken to be the same scheme).
    protocol_options={"proto": "", "proto-redir": ""},
    url_protocol_options=frozenset({"proto"}),
    method_options=frozenset({"request"}),
    next_option="next",
    globoff_option="globoff",
    header_options=frozenset({"header"}),
    user_password_options=frozenset({"user"}),
    user_options=frozenset(),
    password_options=frozenset(),
    preemptive={
        "basic": True,
        "digest": False,
        "ntlm": False,
        "ntlm-wb": False,
        "negotiate": False,
        "anyauth": False,
    },
    preemptive_default=True,
    family_options={"ipv4": 4, "ipv6": 6},
    ca_file_options=frozenset({"cacert"}),
    ca_dir_options=frozenset({"capath"}),
    no_verify={"insecure": True},
    ca_env=(("CURL_CA_BUNDLE", ""), ("SSL_CERT_FILE", "SSL_CERT_DIR")),
    proxy_options={
        "proxy": True,
        **dict.fromkeys(["preproxy", "socks4", "socks4a", "socks5", "socks5-hostname"], False),
    },
    proxy_switch=None,
    no_proxy_option="noproxy",
    proxy_env={
        "http": ("http_proxy", "all_proxy", "ALL_PROXY"),
        "https": ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"),
    },
    no_proxy_env=("no_proxy", "NO_PROXY"),
    execute_option=None,
    execute_aliases={},
    execute_ignored=frozenset(),
    # curl's exit codes for a failure before the body: 6 and 7 the cache-host
    # can't be resolved or reached, 22 an HTTP error under --fail (no body
    # written), 35 and 60 TLS, 52 nothing answered.
    fallback_statuses=(6, 7, 22, 35, 52, 60),
    fail_option="fail",
    unsupervised={
        "fail-with-body": "writes an error's body",
        "write-out": "writes to stdout after a failure too",
        "dump-header": "writes the failed try's headers",
        "head": "writes the failed try's headers",
        "cookie-jar": "writes the failed try's cookies",
        "etag-save": "writes the failed try's ETag",
        "trace": "writes a trace of the failed try",
        "trace-ascii": "writes a trace of the failed try",
    },
    # ... and midway: 8 a strange answer, 16 and 92 HTTP/2, 18 a short body, 28
    # a timeout, 55 and 56 the connection broke.
    file_fallback_statuses=(8, 16, 18, 28, 55, 56, 92),
    output_options=frozenset({"output"}),
    remote_name_options=frozenset({"remote-name", "remote-name-all"}),
    keep_options=frozenset({"continue-at"}),
)
