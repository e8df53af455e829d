"""What the shim knows about wget: its options (GNU Wget 1.21) and their meaning.

wget reads its command line with GNU getopt_long, so the table lists every
name getopt matches, including the `--no-<name>` forms it generates for
booleans and the options `wget --help` leaves out or shows without their
argument (test_option_tables.py compares it with the installed wget).
Booleans take an optional argument (`--timestamping=off`), which getopt only
accepts after `=`. `-n` takes the letters of -nv, -nc, -nd, -nH, -np.
"""

from __future__ import annotations

from withcache.shim.scan import ARG, FLAG, GETOPT, OPTIONAL, Table
from withcache.shim.tool import Tool

_TAKES_ARGUMENT = """
    accept accept-regex append-output base bind-address body-data body-file ca-certificate
    ca-directory certificate certificate-type ciphers compression config connect-timeout
    crl-file cut-dirs default-page directory-prefix dns-timeout domains dot-style egd-file
    exclude-directories exclude-domains execute follow-tags ftp-password ftp-user header
    hsts-file http-passwd http-password http-user ignore-tags include-directories input-file
    level limit-rate load-cookies local-encoding max-redirect method no output-document
    output-file password pinnedpubkey post-data post-file prefer-family private-key
    private-key-type progress proxy-passwd proxy-password proxy-user proxy__compat quota
    random-file read-timeout referer regex-type reject reject-regex rejected-log
    remote-encoding retry-on-http-error save-cookies secure-protocol start-pos timeout tries
    use-askpass user user-agent wait waitretry warc-dedup warc-file warc-header
    warc-max-size warc-tempdir
"""
_FLAGS = """
    dont-remove-listing help no-adjust-extension no-ask-password no-auth-no-challenge
    no-background no-backup-converted no-backups no-cache no-check-certificate
    no-content-disposition no-content-on-error no-continue no-convert-file-only
    no-convert-links no-cookies no-debug no-delete-after no-directories no-dns-cache
    no-follow-ftp no-force-directories no-force-html no-ftps-clear-data-connection
    no-ftps-fallback-to-ftp no-ftps-implicit no-ftps-resume-ssl no-glob no-host-directories
    no-hsts no-html-extension no-htmlify no-http-keep-alive no-https-only
    no-if-modified-since no-ignore-case no-ignore-length no-inet4-only no-inet6-only no-iri
    no-keep-badhash no-keep-session-cookies no-mirror no-netrc no-no-clobber no-no-config
    no-no-parent no-page-requisites no-passive-ftp no-preserve-permissions
    no-protocol-directories no-proxy no-quiet no-random-wait no-recursive no-relative
    no-remove-listing no-report-speed no-restrict-file-names no-retr-symlinks
    no-retry-connrefused no-retry-on-host-error no-save-headers no-server-response
    no-show-progress no-span-hosts no-spider no-strict-comments no-timestamping
    no-trust-server-names no-unlink no-use-server-timestamps no-verbose no-warc-cdx
    no-warc-compression no-warc-digests no-warc-keep-log no-xattr version
"""
_OPTIONAL_ARGUMENT = """
    adjust-extension ask-password auth-no-challenge background backup-converted backups
    cache check-certificate clobber content-disposition content-on-error continue
    convert-file-only convert-links cookies debug delete-after directories dns-cache
    follow-ftp force-directories force-html ftps-clear-data-connection ftps-fallback-to-ftp
    ftps-implicit ftps-resume-ssl glob host-directories hsts html-extension htmlify
    http-keep-alive https-only if-modified-since ignore-case ignore-length inet4-only
    inet6-only iri keep-badhash keep-session-cookies mirror netrc no-clobber no-config
    no-parent page-requisites parent passive-ftp preserve-permissions protocol-directories
    proxy quiet random-wait recursive relative remove-listing report-speed
    restrict-file-names retr-symlinks retry-connrefused retry-on-host-error save-headers
    server-response show-progress span-hosts spider strict-comments timestamping
    trust-server-names unlink use-server-timestamps verbose warc-cdx warc-compression
    warc-digests warc-keep-log xattr
"""
_SHORT = {
    "4": "inet4-only", "6": "inet6-only",
    "a": "append-output", "A": "accept", "b": "background", "B": "base", "c": "continue",
    "d": "debug", "D": "domains", "e": "execute", "E": "adjust-extension", "F": "force-html",
    "h": "help", "H": "span-hosts", "i": "input-file", "I": "include-directories",
    "k": "convert-links", "K": "backup-converted", "l": "level", "L": "relative",
    "m": "mirror", "n": "no", "N": "timestamping", "o": "output-file",
    "O": "output-document", "p": "page-requisites", "P": "directory-prefix", "q": "quiet",
    "Q": "quota", "r": "recursive", "R": "reject", "S": "server-response", "t": "tries",
    "T": "timeout", "U": "user-agent", "v": "verbose", "V": "version", "w": "wait",
    "x": "force-directories", "X": "exclude-directories", "Y": "proxy__compat",
}  # fmt: skip

TABLE = Table(
    style=GETOPT,
    long={
        **dict.fromkeys(_TAKES_ARGUMENT.split(), ARG),
        **dict.fromkeys(_FLAGS.split(), FLAG),
        **dict.fromkeys(_OPTIONAL_ARGUMENT.split(), OPTIONAL),
    },
    short=_SHORT,
)

_BODY = "sends a request body"
_RECURSIVE = "follows links and names files after the URL's host"

TOOL = Tool(
    name="wget",
    table=TABLE,
    server_env="WGETWITHCACHE_SERVER",
    real_env="REAL_WGET",
    url_options=frozenset(),
    pass_through={
        **dict.fromkeys(["post-data", "post-file", "body-data", "body-file"], _BODY),
        **dict.fromkeys(["recursive", "mirror", "page-requisites"], _RECURSIVE),
        "force-directories": "names files after the URL's host",
        "protocol-directories": "names files after the URL's scheme",
        "convert-links": "rewrites links relative to the URL",
        "trust-server-names": "names the file after the last redirect",
        "accept-regex": "matches patterns against the whole URL",
        "reject-regex": "matches patterns against the whole URL",
        "save-headers": "writes response headers into the file",
        "xattr": "records the URL in file attributes",
        "warc-file": "records requests and responses",
        "pinnedpubkey": "pins the origin's TLS key",
        "proxy__compat": "sets proxy use with -Y",
        "config": "reads more options from a file (--config)",
        "help": "makes no transfer",
        "version": "makes no transfer",
    },
    https_pass_through=dict.fromkeys(
        ["secure-protocol", "ciphers"], "limits TLS, which an https cache-host may not meet"
    ),
    # --https-only limits the links a recursive wget follows (a URL as written
    # may be http), but it says TLS only: the cache-host must be https.
    protocol_options={"https-only": "=https"},
    url_protocol_options=frozenset(),
    method_options=frozenset({"method"}),
    next_option=None,
    globoff_option=None,
    header_options=frozenset({"header"}),
    user_password_options=frozenset(),
    user_options=frozenset({"user", "http-user"}),
    password_options=frozenset({"password", "http-password", "http-passwd"}),
    preemptive={"auth-no-challenge": True},
    preemptive_default=False,
    family_options={"inet4-only": 4, "inet6-only": 6},
    ca_file_options=frozenset({"ca-certificate"}),
    ca_dir_options=frozenset({"ca-directory"}),
    no_verify={"check-certificate": False},
    ca_env=(),  # Debian's wget uses GnuTLS and the system store; SSL_CERT_FILE is ignored
    proxy_options={},
    proxy_switch="proxy",
    no_proxy_option=None,
    # wget reads the lowercase names; the uppercase ones are checked too, to be safe.
    proxy_env={
        "http": ("http_proxy", "HTTP_PROXY"),
        "https": ("https_proxy", "HTTPS_PROXY"),
    },
    no_proxy_env=("no_proxy", "NO_PROXY"),
    execute_option="execute",
    execute_aliases={
        "useproxy": "proxy",
        "dirstruct": "force-directories",
        "input": "input-file",
        "dirprefix": "directory-prefix",
    },
    execute_ignored=frozenset({"robots"}),
    # wget's exit codes for a failure that saved nothing: 5 TLS, 8 an error
    # answer (its body is not saved). 4, a network failure, is left out: wget
    # also gives it after retrying a body cut off midway, with part of it saved.
    fallback_statuses=(5, 8),
    fail_option=None,
    unsupervised={
        "content-on-error": "saves an error's body",
        "save-cookies": "writes the failed try's cookies",
        "input-file": "fetches more URLs than the one on the command line",
    },
    file_fallback_statuses=(4,),  # -O FILE is truncated when wget starts
    output_options=frozenset({"output-document"}),
    remote_name_options=frozenset(),  # its own naming keeps a partial file: x.run.1
    keep_options=frozenset({"continue", "no-clobber", "timestamping", "start-pos"}),
)
