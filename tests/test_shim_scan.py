"""Property tests for the argument scanner: generated curl and wget command
lines, in every form the tools accept, keep every word that is not a URL.

Option arguments are drawn from the same strategy as URLs, so a scanner that
took an option's argument for a URL would rewrite it and fail here.
"""

from hypothesis import given, settings
from hypothesis import strategies as st

from withcache import keys
from withcache.shim import curl, wget
from withcache.shim.plan import plan
from withcache.shim.probe import HIT, Answer
from withcache.shim.scan import ARG, BOOL, GETOPT, OPTIONAL, Unreadable, scan

CACHE = "http://cache:3000"
ENV = {"WITHCACHE_SERVER": CACHE}
TOOLS = {"curl": curl.TOOL, "wget": wget.TOOL}


def all_hits(server, requests):
    return [Answer(HIT)] * len(requests)


def neutral_options(tool):
    """Options that change nothing about whether a URL may be served."""
    special = (
        set(tool.pass_through)
        | set(tool.https_pass_through)
        | tool.method_options
        | tool.url_options
        | set(tool.proxy_options)
        | set(tool.protocol_options)  # scheme limits: an http cache-host may not meet them
        | {tool.next_option, tool.execute_option}
    )
    names = [n for n in tool.table.long if n not in special]
    # wget's generated --no-<name> forms of blocked switches count as the switch.
    return sorted(n for n in names if not (n.startswith("no-") and n[3:] in special))


def short_for(tool):
    return {long: letter for letter, long in tool.table.short.items()}


def unique_prefixes(tool):
    """name -> every abbreviation of it that the tool resolves to it."""
    names = sorted(tool.table.long)
    found = {}
    for name in names:
        others = [n for n in names if n != name and n[0] == name[0]]
        found[name] = [
            name[:k] for k in range(1, len(name)) if not any(o.startswith(name[:k]) for o in others)
        ]
    return found


PREFIXES = {name: unique_prefixes(tool) for name, tool in TOOLS.items()}


hosts = st.sampled_from(["vendor.example", "cdn.example:8443", "127.0.0.1:8080"])
paths = st.lists(st.from_regex(r"[A-Za-z0-9._~-]{1,10}", fullmatch=True), min_size=1, max_size=3)
urls = st.builds(
    lambda scheme, host, parts, query: f"{scheme}://{host}/{'/'.join(parts)}{query}",
    st.sampled_from(["http", "https", "HTTPS"]),
    hosts,
    paths,
    st.sampled_from(["", "?sig=abc&x=1", "?v=2"]),
)
# What an option's argument may look like: URLs above all, and words that
# start with a dash (`-o -`).
values = st.one_of(urls, st.sampled_from(["-", "-x", "file.out", "", "a=b", "X: https://h/"]))
others = st.sampled_from(["file:///etc/hostname", "ftp://h/x", "plainword"])


@st.composite
def commands(draw, tool_name):
    """(argv, positions of the URLs to be rewritten) for a valid command line."""
    tool = TOOLS[tool_name]
    options = neutral_options(tool)
    shorts = short_for(tool)
    argv, url_at = [], []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["url", "other", "option", "option", "bundle"]))
        if kind == "url":
            url_at.append(len(argv))
            argv.append(draw(urls))
        elif kind == "other":
            argv.append(draw(others))
        elif kind == "option":
            argv.extend(render(draw, tool, draw(st.sampled_from(options)), shorts))
        else:
            argv.extend(bundle(draw, tool, options, shorts))
    if tool.url_options and draw(st.booleans()):
        url_at.append(len(argv) + 1)
        argv.extend(["--url", draw(urls)])
    return argv, url_at


def render(draw, tool, name, shorts):
    kind = tool.table.long[name]
    spelled = draw(st.sampled_from([name, *PREFIXES[tool.name][name]]))
    if name in shorts and draw(st.booleans()):
        letter = shorts[name]
        if kind != ARG:
            return [f"-{letter}"]
        value = draw(values)
        return [f"-{letter}{value}"] if value and draw(st.booleans()) else [f"-{letter}", value]
    if kind == ARG:
        value = draw(values)
        if tool.table.style == GETOPT and draw(st.booleans()):
            return [f"--{spelled}={value}"]
        return [f"--{spelled}", value]
    if kind == BOOL and draw(st.booleans()):
        return [f"--no-{name}"]
    if kind == OPTIONAL and draw(st.booleans()):
        return [f"--{spelled}={draw(st.sampled_from(['on', 'off']))}"]
    return [f"--{spelled}"]


def bundle(draw, tool, options, shorts):
    """Short options run together: -sSLo file."""
    flags = [shorts[n] for n in options if n in shorts and tool.table.long[n] != ARG]
    takes = [shorts[n] for n in options if n in shorts and tool.table.long[n] == ARG]
    letters = "".join(draw(st.lists(st.sampled_from(flags), min_size=1, max_size=4)))
    if not draw(st.booleans()):
        return [f"-{letters}"]
    value = draw(values)
    last = draw(st.sampled_from(takes))
    return [f"-{letters}{last}{value}"] if value else [f"-{letters}{last}", value]


def check(tool_name, argv, url_at):
    result = plan(tool_name, argv, ENV, all_hits)
    for i, word in enumerate(argv):
        if i in url_at:
            assert result.argv[i] == CACHE + keys.serve_path(word), (i, argv)
        else:
            assert result.argv[i] == word, (i, argv)


@settings(max_examples=150)
@given(commands("curl"))
def test_curl_command_keeps_every_word_but_its_urls(command):
    check("curl", *command)


@settings(max_examples=150)
@given(commands("wget"))
def test_wget_command_keeps_every_word_but_its_urls(command):
    check("wget", *command)


words = st.one_of(
    urls,
    st.text(max_size=12),
    st.sampled_from(["-o", "-O", "--url", "--", "-e", "-H", "-sSL", "--output", "-qO-"]),
)


@settings(max_examples=200)
@given(st.sampled_from(["curl", "wget"]), st.lists(words, max_size=10))
def test_any_argv_only_ever_changes_http_words(tool_name, argv):
    result = plan(tool_name, argv, ENV, all_hits)
    assert len(result.argv) == len(argv)
    for before, after in zip(argv, result.argv, strict=True):
        if before != after:
            assert before[:8].lower().startswith(("http://", "https://"))
            assert after == CACHE + keys.serve_path(before)


@given(st.sampled_from(["curl", "wget"]), st.lists(st.text(max_size=12), max_size=10))
def test_scan_either_reads_or_says_why(tool_name, argv):
    try:
        tokens = scan(TOOLS[tool_name].table, argv)
    except Unreadable as err:
        assert str(err)
        return
    covered = set()
    for token in tokens:
        covered.add(token.index)
        if token.value_index >= 0:
            covered.add(token.value_index)
    assert covered | {i for i, w in enumerate(argv) if w == "--"} == set(range(len(argv)))
