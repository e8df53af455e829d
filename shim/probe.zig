//! Ask the cache-host whether it holds URLs (a port of probe.py): one HEAD
//! per request, up to 8 at once in threads, all within one budget. The
//! caller waits at most the budget, so a hung DNS lookup or a cache that
//! accepts and never answers costs no more; threads still busy then die
//! with the exec. Never fails and never prints: a failure is UNREACHABLE.
//!
//! An http cache-host is asked over a plain socket. An https one is asked
//! by the real tool itself (`curl -I` / `wget --spider -S`) with the trust
//! the command gives it: Zig's TLS client would take the binary from
//! ~100 KB to ~450 KB, and the tool checks certificates exactly as it will
//! for the download.

const std = @import("std");
const c = std.c;
const plan = @import("plan.zig");
const text = @import("text.zig");
const cachehost = @import("cachehost.zig");
const Env = @import("env.zig").Env;

const Request = plan.Request;
const Answer = plan.Answer;
const CacheHost = cachehost.CacheHost;

pub const connect_timeout_ms = 1000; // one TCP connect
pub const default_budget = 2.0; // seconds for the whole probe, all URLs together
const max_parallel = 8;
const max_head = 64 * 1024;
// Workers allocate from malloc (thread-safe) and never free: the process execs next.
const gpa = std.heap.c_allocator;

/// The budget in seconds: WITHCACHE_PROBE_TIMEOUT if it is a sane number.
pub fn budget(env: Env) f64 {
    return budgetOf(env.text("WITHCACHE_PROBE_TIMEOUT")) orelse default_budget;
}

/// A probe budget from text (probe.seconds in Python): seconds, more than 0 and at most 600.
pub fn budgetOf(raw: []const u8) ?f64 {
    const value = parseFloat(raw) orelse return null;
    return if (value > 0 and value <= 600) value else null;
}

/// Python's float() syntax: [sign] digits with single '_' between them,
/// optional fraction and exponent, or inf/infinity/nan; whitespace around.
fn parseFloat(raw: []const u8) ?f64 {
    const s = text.strip(raw);
    var body = s;
    if (body.len > 0 and (body[0] == '+' or body[0] == '-')) body = body[1..];
    for ([_][]const u8{ "inf", "infinity", "nan" }) |word| {
        if (std.ascii.eqlIgnoreCase(body, word)) return std.fmt.parseFloat(f64, s) catch null;
    }
    var clean: [64]u8 = undefined;
    var n: usize = 0;
    var digits: usize = 0;
    var i: usize = 0;
    var seen_dot = false;
    var seen_exp = false;
    while (i < s.len) : (i += 1) {
        const ch = s[i];
        const prev_digit = i > 0 and std.ascii.isDigit(s[i - 1]);
        const next_digit = i + 1 < s.len and std.ascii.isDigit(s[i + 1]);
        switch (ch) {
            '0'...'9' => if (!seen_exp) {
                digits += 1;
            },
            '_' => if (prev_digit and next_digit) continue else return null,
            '.' => if (seen_dot or seen_exp) return null else {
                seen_dot = true;
            },
            'e', 'E' => if (seen_exp or digits == 0 or !(next_digit or (i + 2 < s.len and (s[i + 1] == '+' or s[i + 1] == '-') and std.ascii.isDigit(s[i + 2])))) return null else {
                seen_exp = true;
            },
            '+', '-' => if (i != 0 and !(s[i - 1] == 'e' or s[i - 1] == 'E')) return null,
            else => return null,
        }
        if (n == clean.len) return null;
        clean[n] = ch;
        n += 1;
    }
    if (digits == 0) return null;
    return std.fmt.parseFloat(f64, clean[0..n]) catch null;
}

/// HEAD each request on the cache-host; answers in the same order, within `seconds`.
pub fn probe(server: CacheHost, requests: []const Request, answers: []Answer, seconds: f64, with_tool: ?ToolProbe) void {
    const deadline = now() + @as(i64, @intFromFloat(seconds * 1e9));
    if (requests.len == 1 and with_tool == null and isAddress(server.host)) {
        // Nothing can block past the deadline (no DNS, every wait is a poll):
        // ask from this thread and spare a loaded machine two wake-ups.
        answers[0] = head(server, requests[0], deadline);
        if (answers[0].state == .@"unreachable" and now() >= deadline) answers[0].detail = withinDetail(seconds);
        return;
    }
    // On the heap: workers still running at the deadline go on using it until the exec.
    const shared = gpa.create(Shared) catch return late(answers, "out of memory");
    shared.* = .{ .server = server, .requests = requests, .deadline = deadline, .with_tool = with_tool };
    shared.results = gpa.alloc(Slot, requests.len) catch return late(answers, "out of memory");
    for (shared.results) |*slot| slot.* = .{};
    var fds: [2]c.fd_t = undefined;
    if (c.pipe2(&fds, .{ .CLOEXEC = true }) != 0) return late(answers, "no pipe");
    shared.done_fd = fds[1];
    const workers = @min(max_parallel, requests.len);
    var started: usize = 0;
    for (0..workers) |_| {
        const thread = std.Thread.spawn(.{ .stack_size = 256 * 1024 }, work, .{shared}) catch break;
        thread.detach();
        started += 1;
    }
    if (started == 0) work(shared); // no thread to be had: ask in this one
    var finished: usize = 0;
    while (finished < started) {
        const left = deadline - now();
        if (left <= 0) break;
        var poll_fds = [_]c.pollfd{.{ .fd = fds[0], .events = c.POLL.IN, .revents = 0 }};
        const ms: c_int = @intCast(@divFloor(left + 999_999, 1_000_000));
        if (c.poll(&poll_fds, 1, ms) <= 0) continue;
        var buf: [max_parallel]u8 = undefined;
        const got = c.read(fds[0], &buf, buf.len);
        if (got > 0) finished += @intCast(got);
    }
    for (shared.results, answers) |*slot, *answer| {
        if (slot.ready.load(.acquire)) {
            answer.* = slot.answer;
        } else {
            const child = slot.child.load(.acquire);
            if (child > 0) _ = c.kill(child, .KILL); // a tool probe past the budget
            answer.* = .{ .state = .@"unreachable", .detail = withinDetail(seconds) };
        }
    }
}

/// Whether `host` is an IP address literal, which getaddrinfo answers without a lookup.
fn isAddress(host: []const u8) bool {
    const name = gpa.dupeSentinel(u8, host, 0) catch return false;
    var hints = std.mem.zeroes(c.addrinfo);
    hints.flags = .{ .NUMERICHOST = true };
    var infos: ?*c.addrinfo = null;
    return @intFromEnum(c.getaddrinfo(name, null, &hints, &infos)) == 0;
}

fn late(answers: []Answer, why: []const u8) void {
    for (answers) |*answer| answer.* = .{ .state = .@"unreachable", .detail = why };
}

fn withinDetail(seconds: f64) []const u8 {
    var buf: [32]u8 = undefined;
    return std.fmt.allocPrint(gpa, "no answer within {s} s", .{formatG(&buf, seconds)}) catch "no answer in time";
}

/// `{seconds:g}` for 0 < seconds <= 600: six significant digits, no trailing zeros.
fn formatG(buf: []u8, value: f64) []const u8 {
    var exponent: i32 = @intFromFloat(@floor(std.math.log10(value)));
    var scaled = @round(value * std.math.pow(f64, 10, @floatFromInt(5 - exponent)));
    if (scaled >= 1e6) { // rounding carried into another digit
        exponent += 1;
        scaled = @round(scaled / 10);
    }
    var digits: [6]u8 = undefined;
    _ = std.fmt.bufPrint(&digits, "{d:0>6}", .{@as(u64, @intFromFloat(scaled))}) catch unreachable;
    var used: usize = 6;
    while (used > 1 and digits[used - 1] == '0') used -= 1;
    const d = digits[0..used];
    if (exponent < -4) {
        const point: []const u8 = if (used > 1) "." else "";
        return std.fmt.bufPrint(buf, "{c}{s}{s}e-{d:0>2}", .{ d[0], point, d[1..], @as(u32, @intCast(-exponent)) }) catch "?";
    }
    if (exponent < 0) {
        var w: std.Io.Writer = .fixed(buf);
        w.writeAll("0.") catch {};
        for (0..@intCast(-exponent - 1)) |_| w.writeByte('0') catch {};
        w.writeAll(d) catch {};
        return w.buffered();
    }
    const whole: usize = @intCast(exponent + 1);
    if (used <= whole) {
        var w: std.Io.Writer = .fixed(buf);
        w.writeAll(d) catch {};
        for (used..whole) |_| w.writeByte('0') catch {};
        return w.buffered();
    }
    return std.fmt.bufPrint(buf, "{s}.{s}", .{ d[0..whole], d[whole..] }) catch "?";
}

/// How to ask through the real tool (an https cache-host, or a build that
/// always does, to time the alternative).
pub const ToolProbe = struct {
    path: [*:0]const u8, // the real tool
    is_curl: bool,
    env: Env,
};

const Slot = struct {
    ready: std.atomic.Value(bool) = .init(false),
    child: std.atomic.Value(c.pid_t) = .init(0),
    answer: Answer = .{ .state = .@"unreachable" },
};

const Shared = struct {
    server: CacheHost,
    requests: []const Request,
    deadline: i64,
    with_tool: ?ToolProbe,
    results: []Slot = &.{},
    next: std.atomic.Value(usize) = .init(0),
    done_fd: c.fd_t = -1,
};

fn work(shared: *Shared) void {
    while (true) {
        const i = shared.next.fetchAdd(1, .monotonic);
        if (i >= shared.requests.len) break;
        const slot = &shared.results[i];
        slot.answer = if (shared.with_tool) |tool|
            headWithTool(shared.server, shared.requests[i], shared.deadline, tool, slot)
        else
            head(shared.server, shared.requests[i], shared.deadline);
        slot.ready.store(true, .release);
    }
    _ = c.write(shared.done_fd, "x", 1);
}

fn now() i64 {
    var ts: c.timespec = undefined;
    _ = c.clock_gettime(.MONOTONIC, &ts);
    return @as(i64, ts.sec) * 1_000_000_000 + ts.nsec;
}

/// Milliseconds left before the deadline, capped (null: none left).
fn remainingMs(deadline: i64, cap: ?i64) ?c_int {
    const left = deadline - now();
    if (left <= 0) return null;
    const ms = @divFloor(left + 999_999, 1_000_000);
    return @intCast(if (cap) |most| @min(ms, most) else ms);
}

const Failure = error{ Failed, OutOfMemory };

/// Say why in `why` and fail.
fn fail(why: *[]const u8, comptime fmt: []const u8, args: anytype) Failure {
    why.* = try std.fmt.allocPrint(gpa, fmt, args);
    return error.Failed;
}

extern "c" fn strerror(errnum: c_int) [*:0]const u8;

fn errnoText(why: *[]const u8, prefix: []const u8, err: c_int) Failure {
    return fail(why, "{s}[Errno {d}] {s}", .{ prefix, err, std.mem.span(strerror(err)) });
}

fn lastErrno() c_int {
    return c._errno().*;
}

/// One HEAD of `request.path` on the cache-host over a socket, giving up at `deadline`.
fn head(server: CacheHost, request: Request, deadline: i64) Answer {
    var why: []const u8 = "";
    const sock = connect(server, request.family, deadline, &why) catch {
        return .{ .state = .@"unreachable", .detail = std.fmt.allocPrint(gpa, "cannot connect: {s}", .{why}) catch why };
    };
    defer _ = c.close(sock);
    for (server.netloc) |ch| { // Python's probe can't write a non-ASCII Host header
        if (ch >= 0x80) return .{ .state = .@"unreachable", .detail = "the cache-host's name is not ASCII" };
    }
    const received = exchange(sock, server, request, deadline, &why) catch {
        return .{ .state = .@"unreachable", .detail = why };
    };
    return classify(received) catch .{ .state = .@"unreachable", .detail = "not an HTTP response" };
}

fn connect(server: CacheHost, family: u8, deadline: i64, why: *[]const u8) Failure!c.fd_t {
    // Lowercase: musl matches /etc/hosts names case-sensitively, glibc (Python's) doesn't.
    const host = try gpa.dupeSentinel(u8, server.host, 0);
    _ = std.ascii.lowerString(host, host);
    var port_buf: [8]u8 = undefined;
    const port = std.fmt.bufPrintSentinel(&port_buf, "{d}", .{server.port}, 0) catch unreachable;
    var hints = std.mem.zeroes(c.addrinfo);
    hints.family = switch (family) {
        4 => c.AF.INET,
        6 => c.AF.INET6,
        else => c.AF.UNSPEC,
    };
    hints.socktype = c.SOCK.STREAM;
    var infos: ?*c.addrinfo = null;
    const rc = c.getaddrinfo(host, port, &hints, &infos);
    if (@intFromEnum(rc) != 0) {
        return fail(why, "[Errno {d}] {s}", .{ @intFromEnum(rc), std.mem.span(c.gai_strerror(rc)) });
    }
    var last_error: Failure = fail(why, "no address for {s}", .{server.host});
    var info = infos;
    while (info) |ai| : (info = ai.next) {
        const sock = c.socket(@intCast(ai.family), @as(c_uint, @intCast(ai.socktype)) | c.SOCK.NONBLOCK | c.SOCK.CLOEXEC, @intCast(ai.protocol));
        if (sock < 0) {
            last_error = errnoText(why, "", lastErrno());
            continue;
        }
        if (connectOne(sock, ai, deadline, why)) return sock else |err| last_error = err;
        _ = c.close(sock);
    }
    return last_error;
}

fn connectOne(sock: c.fd_t, ai: *c.addrinfo, deadline: i64, why: *[]const u8) Failure!void {
    const ms = remainingMs(deadline, connect_timeout_ms) orelse return fail(why, "probe budget spent", .{});
    if (c.connect(sock, ai.addr.?, ai.addrlen) == 0) return;
    const err = lastErrno();
    if (err != @intFromEnum(c.E.INPROGRESS)) return errnoText(why, "", err);
    var fds = [_]c.pollfd{.{ .fd = sock, .events = c.POLL.OUT, .revents = 0 }};
    if (c.poll(&fds, 1, ms) == 0) return fail(why, "timed out", .{});
    var so_error: c_int = 0;
    var len: c.socklen_t = @sizeOf(c_int);
    _ = c.getsockopt(sock, c.SOL.SOCKET, c.SO.ERROR, &so_error, &len);
    if (so_error != 0) return errnoText(why, "", so_error);
}

/// Send the request and read the response head (all of it, so the close is clean).
fn exchange(sock: c.fd_t, server: CacheHost, request: Request, deadline: i64, why: *[]const u8) Failure![]const u8 {
    const bytes = try requestBytes(server, request);
    var sent: usize = 0;
    while (sent < bytes.len) {
        try wait(sock, c.POLL.OUT, deadline, why);
        const n = c.send(sock, bytes[sent..].ptr, bytes.len - sent, std.os.linux.MSG.NOSIGNAL);
        if (n < 0) {
            const err = lastErrno();
            if (err == @intFromEnum(c.E.AGAIN)) continue;
            return errnoText(why, "", err);
        }
        sent += @intCast(n);
    }
    const buffer = try gpa.alloc(u8, max_head + 4096);
    var received: usize = 0;
    while (std.mem.indexOf(u8, buffer[0..received], "\r\n\r\n") == null) {
        try wait(sock, c.POLL.IN, deadline, why);
        const n = c.recv(sock, buffer[received..].ptr, 4096, 0);
        if (n < 0) {
            const err = lastErrno();
            if (err == @intFromEnum(c.E.AGAIN)) continue;
            return errnoText(why, "", err);
        }
        if (n == 0) break;
        received += @intCast(n);
        if (received > max_head) break;
    }
    return buffer[0..received];
}

fn wait(sock: c.fd_t, events: i16, deadline: i64, why: *[]const u8) Failure!void {
    const ms = remainingMs(deadline, null) orelse return fail(why, "probe budget spent", .{});
    var fds = [_]c.pollfd{.{ .fd = sock, .events = events, .revents = 0 }};
    if (c.poll(&fds, 1, ms) == 0) return fail(why, "timed out", .{});
}

/// The request path as sent: percent-encoded only when not plain ASCII (probe.py's rule).
fn wirePath(path: []const u8) ![]const u8 {
    var plain = true;
    for (path) |ch| {
        if (ch >= 0x80 or ch == ' ') plain = false;
    }
    if (plain) return path;
    var out: std.ArrayList(u8) = .empty;
    for (path) |ch| {
        if (ch > 0x20 and ch < 0x7f) {
            try out.append(gpa, ch);
        } else {
            try out.print(gpa, "%{X:0>2}", .{ch});
        }
    }
    return out.items;
}

fn requestBytes(server: CacheHost, request: Request) ![]const u8 {
    var out: std.ArrayList(u8) = .empty;
    try out.print(gpa, "HEAD {s} HTTP/1.1\r\nHost: {s}\r\n", .{ try wirePath(request.path), server.netloc });
    try out.appendSlice(gpa, "User-Agent: withcache-shim\r\nAccept: */*\r\nConnection: close\r\n");
    if (request.authorization) |value| try out.print(gpa, "Authorization: {s}\r\n", .{value});
    try out.appendSlice(gpa, "\r\n");
    return out.items;
}

/// HIT, MISS or REFUSED from a response head; error if it is not HTTP.
fn classify(received: []const u8) error{NotHttp}!Answer {
    const space = std.mem.indexOfScalar(u8, received, ' ') orelse received.len;
    const rest = received[@min(space + 1, received.len)..];
    const code = rest[0..@min(3, rest.len)];
    if (!text.startsWith(received[0..space], "HTTP/") or code.len == 0) return error.NotHttp;
    for (code) |ch| {
        if (!std.ascii.isDigit(ch)) return error.NotHttp;
    }
    const status = std.fmt.parseInt(u16, code, 10) catch return error.NotHttp;
    const head_end = std.mem.indexOf(u8, received, "\r\n\r\n") orelse received.len;
    const head_bytes = received[0..head_end];
    if (status == 200 and (hasSha256Etag(head_bytes) or if (header(head_bytes, "withcache-fill")) |fill| fill.len > 0 else false)) {
        return .{ .state = .hit }; // stored, or being filled and streamed to whoever asks
    }
    if (status == 200) return .{ .state = .refused, .detail = "200 without a SHA-256 ETag: is this a withcache cache-host?" };
    if (status == 404) return .{ .state = .miss };
    return .{ .state = .refused, .detail = std.fmt.allocPrint(gpa, "the cache-host answered {d}", .{status}) catch "the cache-host refused" };
}

const ascii_space = " \t\n\r\x0b\x0c";

fn hasSha256Etag(head_bytes: []const u8) bool {
    const tag = std.mem.trim(u8, header(head_bytes, "etag") orelse "", "\"");
    if (tag.len != 64) return false;
    for (tag) |ch| {
        if (!((ch >= '0' and ch <= '9') or (ch >= 'a' and ch <= 'f'))) return false;
    }
    return true;
}

/// The value of header `wanted` (lowercase) in a response head, if present.
fn header(head_bytes: []const u8, wanted: []const u8) ?[]const u8 {
    var lines = std.mem.splitSequence(u8, head_bytes, "\r\n");
    _ = lines.next(); // the status line
    while (lines.next()) |line| {
        const colon = std.mem.indexOfScalar(u8, line, ':') orelse line.len;
        const name = std.mem.trim(u8, line[0..colon], ascii_space);
        if (std.ascii.eqlIgnoreCase(name, wanted)) {
            return std.mem.trim(u8, line[@min(colon + 1, line.len)..], ascii_space);
        }
    }
    return null;
}

/// One HEAD through the real tool, its output read until it exits or the deadline.
fn headWithTool(server: CacheHost, request: Request, deadline: i64, tool: ToolProbe, slot: *Slot) Answer {
    var why: []const u8 = "";
    const out = runTool(server, request, deadline, tool, slot, &why) catch {
        return .{ .state = .@"unreachable", .detail = why };
    };
    const response = if (tool.is_curl) out else serverResponse(out) catch return .{ .state = .@"unreachable", .detail = "out of memory" };
    return classify(response) catch .{
        .state = .@"unreachable",
        .detail = std.fmt.allocPrint(gpa, "the {s} probe failed", .{if (tool.is_curl) "curl" else "wget"}) catch "",
    };
}

/// wget -S prints the response head indented by two spaces, one header a line.
fn serverResponse(out: []const u8) ![]const u8 {
    var response: std.ArrayList(u8) = .empty;
    var lines = std.mem.splitScalar(u8, out, '\n');
    while (lines.next()) |line| {
        if (!text.startsWith(line, "  ")) continue;
        try response.appendSlice(gpa, std.mem.trimEnd(u8, line[2..], "\r"));
        try response.appendSlice(gpa, "\r\n");
    }
    try response.appendSlice(gpa, "\r\n");
    return response.items;
}

fn toolArgv(server: CacheHost, request: Request, deadline: i64, tool: ToolProbe) ![:null]?[*:0]const u8 {
    const url = try std.mem.concatWithSentinel(gpa, u8, &.{ server.base[0 .. server.base.len - server.prefix.len], try wirePath(request.path) }, 0);
    const left_ms = @max(@divFloor(deadline - now(), 1_000_000), 1);
    const seconds = try std.fmt.allocPrintSentinel(gpa, "{d}.{d:0>3}", .{ @divFloor(left_ms, 1000), @mod(left_ms, 1000) }, 0);
    var argv: std.ArrayList(?[*:0]const u8) = .empty;
    try argv.append(gpa, tool.path);
    const trust = request.trust;
    if (tool.is_curl) {
        // -q: no ~/.curlrc; the probe is direct, like the socket one (plan passed proxied URLs through).
        try argv.appendSlice(gpa, &.{ "-q", "-s", "-I", "--http1.1", "--path-as-is", "--globoff", "--noproxy", "*" });
        try argv.appendSlice(gpa, &.{ "--connect-timeout", "1", "--max-time", seconds, "-A", "withcache-shim" });
        if (!trust.verify) try argv.append(gpa, "-k");
        if (trust.ca_file) |file| try argv.appendSlice(gpa, &.{ "--cacert", try gpa.dupeSentinel(u8, file, 0) });
        if (trust.ca_dir) |dir| try argv.appendSlice(gpa, &.{ "--capath", try gpa.dupeSentinel(u8, dir, 0) });
        if (request.family != 0) try argv.append(gpa, if (request.family == 4) "-4" else "-6");
        if (request.authorization) |value| try argv.appendSlice(gpa, &.{ "-H", try std.fmt.allocPrintSentinel(gpa, "Authorization: {s}", .{value}, 0) });
    } else {
        try argv.appendSlice(gpa, &.{ "--no-config", "--spider", "--server-response", "--tries=1", "--max-redirect=0", "--no-proxy" });
        try argv.appendSlice(gpa, &.{ "--connect-timeout=1", try std.fmt.allocPrintSentinel(gpa, "--timeout={s}", .{seconds}, 0), "--user-agent=withcache-shim" });
        if (!trust.verify) try argv.append(gpa, "--no-check-certificate");
        if (trust.ca_file) |file| try argv.append(gpa, try std.fmt.allocPrintSentinel(gpa, "--ca-certificate={s}", .{file}, 0));
        if (trust.ca_dir) |dir| try argv.append(gpa, try std.fmt.allocPrintSentinel(gpa, "--ca-directory={s}", .{dir}, 0));
        if (request.family != 0) try argv.append(gpa, if (request.family == 4) "--inet4-only" else "--inet6-only");
        if (request.authorization) |value| try argv.append(gpa, try std.fmt.allocPrintSentinel(gpa, "--header=Authorization: {s}", .{value}, 0));
    }
    try argv.append(gpa, url);
    return argv.toOwnedSliceSentinel(gpa, null);
}

/// The child's environment: the CA variables go, the trust is in its options.
fn toolEnv(env: Env) ![:null]?[*:0]const u8 {
    var out: std.ArrayList(?[*:0]const u8) = .empty;
    outer: for (env.block) |entry| {
        const line = std.mem.span(entry orelse continue);
        for ([_][]const u8{ "CURL_CA_BUNDLE=", "SSL_CERT_FILE=", "SSL_CERT_DIR=" }) |dropped| {
            if (text.startsWith(line, dropped)) continue :outer;
        }
        try out.append(gpa, entry);
    }
    return out.toOwnedSliceSentinel(gpa, null);
}

fn runTool(server: CacheHost, request: Request, deadline: i64, tool: ToolProbe, slot: *Slot, why: *[]const u8) Failure![]const u8 {
    const argv = try toolArgv(server, request, deadline, tool);
    const envp = try toolEnv(tool.env);
    var fds: [2]c.fd_t = undefined;
    if (c.pipe2(&fds, .{ .CLOEXEC = true }) != 0) return errnoText(why, "", lastErrno());
    const devnull = c.open("/dev/null", .{ .ACCMODE = .RDWR, .CLOEXEC = true });
    const pid = c.fork();
    if (pid < 0) return errnoText(why, "cannot run the probe: ", lastErrno());
    if (pid == 0) { // the child: only async-signal-safe calls from here
        _ = c.dup2(devnull, 0);
        _ = c.dup2(fds[1], 1);
        _ = c.dup2(if (tool.is_curl) devnull else fds[1], 2); // wget -S writes to stderr
        _ = c.execve(tool.path, argv.ptr, envp.ptr);
        c._exit(127);
    }
    slot.child.store(pid, .release);
    _ = c.close(fds[1]);
    _ = c.close(devnull);
    defer _ = c.close(fds[0]);
    var out: std.ArrayList(u8) = .empty;
    var buf: [4096]u8 = undefined;
    while (out.items.len <= max_head) {
        wait(fds[0], c.POLL.IN, deadline, why) catch |err| {
            _ = c.kill(pid, .KILL);
            slot.child.store(0, .release);
            _ = c.waitpid(pid, null, 0);
            return err;
        };
        const n = c.read(fds[0], &buf, buf.len);
        if (n <= 0) break;
        try out.appendSlice(gpa, buf[0..@intCast(n)]);
    }
    slot.child.store(0, .release);
    var status: c_int = 0;
    _ = c.waitpid(pid, &status, 0);
    const code = (status >> 8) & 0xff;
    if (tool.is_curl and code != 0) return fail(why, "curl exited {d}", .{code});
    return out.items;
}

test "Python float syntax" {
    try std.testing.expectEqual(@as(?f64, 0.4), parseFloat(" 0.4 "));
    try std.testing.expectEqual(@as(?f64, 1000), parseFloat("1_000"));
    try std.testing.expectEqual(@as(?f64, null), parseFloat("1__0"));
    try std.testing.expectEqual(@as(?f64, null), parseFloat("0x10"));
    try std.testing.expectEqual(@as(?f64, 50), parseFloat("5e1"));
    var buf: [32]u8 = undefined;
    try std.testing.expectEqualStrings("0.4", formatG(&buf, 0.4));
    try std.testing.expectEqualStrings("2", formatG(&buf, 2));
    try std.testing.expectEqualStrings("600", formatG(&buf, 600));
    try std.testing.expectEqualStrings("1e-05", formatG(&buf, 0.00001));
    try std.testing.expectEqualStrings("0.000123", formatG(&buf, 0.000123));
}
