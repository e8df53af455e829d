//! The shim's whole decision (a port of plan.py): argv in, argv out. Reads
//! the command with the tool's table, finds every URL it will fetch, asks
//! the probe about those the cache may serve, and replaces each hit's URL
//! word by its serve URL; every other word stays. Whatever is uncertain
//! leaves the URL, or the whole command, as written. The probe is the only
//! way out to the network.

const std = @import("std");
const tool_ = @import("tool.zig");
const Tool = tool_.Tool;
const text = @import("text.zig");
const scan_ = @import("scan.zig");
const keys = @import("keys.zig");
const cachehost = @import("cachehost.zig");
const Env = @import("env.zig").Env;

const Token = scan_.Token;
const Allocator = std.mem.Allocator;

/// How the tool will check an https cache-host's certificate.
pub const Trust = struct {
    verify: bool = true,
    ca_file: ?[]const u8 = null,
    ca_dir: ?[]const u8 = null,
};

/// One HEAD the probe sends: the same request the tool will make on a hit.
pub const Request = struct {
    url: []const u8,
    path: []const u8, // path and query on the cache-host
    authorization: ?[]const u8, // only when certain the tool sends exactly this
    trust: Trust,
    family: u8, // 4 or 6 when the tool is limited to one IP version, else 0

    fn eql(a: Request, b: Request) bool {
        return std.mem.eql(u8, a.url, b.url) and std.mem.eql(u8, a.path, b.path) and
            optEql(a.authorization, b.authorization) and a.trust.verify == b.trust.verify and
            optEql(a.trust.ca_file, b.trust.ca_file) and optEql(a.trust.ca_dir, b.trust.ca_dir) and
            a.family == b.family;
    }
};

fn optEql(a: ?[]const u8, b: ?[]const u8) bool {
    if (a == null or b == null) return a == null and b == null;
    return std.mem.eql(u8, a.?, b.?);
}

pub const State = enum { hit, miss, @"unreachable", refused };

pub const Answer = struct {
    state: State,
    detail: []const u8 = "",
};

/// Answers `requests` (all distinct) in order; never fails.
pub const Probe = struct {
    context: *anyopaque,
    ask: *const fn (context: *anyopaque, server: cachehost.CacheHost, requests: []const Request, answers: []Answer) void,
};

pub const Plan = struct {
    argv: [][]const u8, // what to exec, without argv[0]
    notes: [][]const u8, // one line per URL (or one for the command) for WITHCACHE_DEBUG
    // A one-URL hit runs as a child with `fail_switch` (if any) before argv;
    // after one of the `fallback` exit statuses the command runs again as
    // written: the cache failed before it delivered anything that can't be
    // taken back. Empty: exec argv and be done.
    fallback: []const u8 = &.{},
    fail_switch: ?[]const u8 = null,
};

const off_words = [_][]const u8{ "off", "no", "0", "false" };

/// The cache-host setting for this tool; a set per-tool variable wins, even empty.
pub fn serverSetting(tool: *const Tool, env: Env) []const u8 {
    if (env.get(tool.server_env)) |value| return text.strip(value);
    return text.strip(env.text("WITHCACHE_SERVER"));
}

pub fn plan(gpa: Allocator, tool: *const Tool, argv: []const []const u8, env: Env, probe: Probe) !Plan {
    const args = try gpa.dupe([]const u8, argv);
    const setting = serverSetting(tool, env);
    if (setting.len == 0) {
        return one(gpa, args, try std.fmt.allocPrint(gpa, "passed through: {s} and WITHCACHE_SERVER unset", .{tool.server_env}));
    }
    var bad: []const u8 = "";
    const server = try cachehost.parse(gpa, setting, &bad) orelse {
        return one(gpa, args, try std.fmt.allocPrint(gpa, "passed through: bad cache-host {f}: {s}", .{ text.Repr{ .s = setting }, bad }));
    };
    var why: scan_.Why = .{ .gpa = gpa };
    const command = read(gpa, tool, argv, env.has("POSIXLY_CORRECT"), &why) catch |err| switch (err) {
        error.Unreadable => return one(gpa, args, try std.fmt.allocPrint(gpa, "passed through: {s}", .{why.message})),
        else => |e| return e,
    };
    if (command.urls.items.len == 0) return one(gpa, args, "passed through: no URL on the command line");
    const blockers = try command.blockers(gpa, tool, server);
    const urls = command.urls.items;
    const notes = try gpa.alloc([]const u8, urls.len);
    var wanted: std.ArrayList(usize) = .empty; // positions in `urls` to probe
    var requests: std.ArrayList(Request) = .empty;
    for (urls, 0..) |entry, position| {
        var reason = urlReason(tool, entry.url, entry.index, entry.op);
        if (reason.len == 0) reason = blockers;
        if (reason.len == 0) reason = try entry.op.protocolReason(gpa, tool, server, entry.url);
        if (reason.len == 0) reason = entry.op.proxyReason(tool, server, env);
        if (reason.len > 0) {
            notes[position] = try std.fmt.allocPrint(gpa, "passed through {s} ({s})", .{ entry.url, reason });
            continue;
        }
        const path = try std.mem.concat(gpa, u8, &.{ server.prefix, try keys.servePath(gpa, entry.url) });
        try wanted.append(gpa, position);
        try requests.append(gpa, .{
            .url = entry.url,
            .path = path,
            .authorization = try entry.op.authorization(gpa, tool),
            .trust = entry.op.trust(tool, env),
            .family = entry.op.family,
        });
    }
    const answers = try ask(gpa, probe, server, requests.items);
    for (wanted.items, answers) |position, answer| {
        const entry = urls[position];
        if (answer.state == .hit) {
            args[entry.index.?] = try std.mem.concat(gpa, u8, &.{ server.base, try keys.servePath(gpa, entry.url) });
            notes[position] = try std.fmt.allocPrint(gpa, "hit {s} -> {s}", .{ entry.url, args[entry.index.?] });
        } else if (answer.detail.len > 0) {
            notes[position] = try std.fmt.allocPrint(gpa, "{t} {s} ({s})", .{ answer.state, entry.url, answer.detail });
        } else {
            notes[position] = try std.fmt.allocPrint(gpa, "{t} {s}", .{ answer.state, entry.url });
        }
    }
    const one_hit = urls.len == 1 and command.ops.items.len == 1 and answers.len == 1 and answers[0].state == .hit;
    if (!one_hit or command.fail == false or anyOn(command.unsupervised.items)) return .{ .argv = args, .notes = notes };
    const fail_switch = if (tool.fail_option) |fail| (if (command.fail == null) try std.mem.concat(gpa, u8, &.{ "--", fail }) else null) else null;
    return .{ .argv = args, .notes = notes, .fallback = try fallback(gpa, tool, &command), .fail_switch = fail_switch };
}

/// The exit statuses after which a one-URL hit runs again as written (see
/// Tool.fallback_statuses in tool.py): more when its body goes to a file written afresh.
fn fallback(gpa: Allocator, tool: *const Tool, command: *const Command) ![]const u8 {
    var stdout = false;
    for (command.outputs.items) |output| stdout = stdout or std.mem.eql(u8, output, "-");
    const named = command.outputs.items.len > 0 or anyOn(command.remote_name.items);
    if (named and !stdout and !anyOn(command.keep.items)) {
        return try std.mem.concat(gpa, u8, &.{ tool.fallback_statuses, tool.file_fallback_statuses });
    }
    return tool.fallback_statuses;
}

fn anyOn(switches: []const Switch) bool {
    for (switches) |s| {
        if (s.on) return true;
    }
    return false;
}

fn one(gpa: Allocator, args: [][]const u8, note: []const u8) !Plan {
    const notes = try gpa.alloc([]const u8, 1);
    notes[0] = note;
    return .{ .argv = args, .notes = notes };
}

/// Probe each distinct request once, in one call (the probe runs them concurrently).
fn ask(gpa: Allocator, probe: Probe, server: cachehost.CacheHost, requests: []const Request) ![]Answer {
    const answers = try gpa.alloc(Answer, requests.len);
    if (requests.len == 0) return answers;
    var distinct: std.ArrayList(Request) = .empty;
    const which = try gpa.alloc(usize, requests.len);
    for (requests, 0..) |request, i| {
        which[i] = for (distinct.items, 0..) |seen, j| {
            if (seen.eql(request)) break j;
        } else blk: {
            try distinct.append(gpa, request);
            break :blk distinct.items.len - 1;
        };
    }
    const distinct_answers = try gpa.alloc(Answer, distinct.items.len);
    probe.ask(probe.context, server, distinct.items, distinct_answers);
    for (which, 0..) |j, i| answers[i] = distinct_answers[j];
    return answers;
}

/// Why this URL can't be served from the cache whatever the cache holds ("" if it can).
fn urlReason(tool: *const Tool, url: []const u8, index: ?usize, op: *const Operation) []const u8 {
    const head = url[0..@min(url.len, 8)];
    if (!(startsWithLower(head, "http://") or startsWithLower(head, "https://"))) return "not an http(s) URL";
    if (index == null) return "shares a word with its option";
    if (!text.isUtf8(url)) return "not valid UTF-8";
    var authority = url[std.mem.indexOf(u8, url, "://").? + 3 ..];
    authority = authority[0 .. std.mem.indexOfAny(u8, authority, "/?#") orelse authority.len];
    if (std.mem.indexOfScalar(u8, authority, '@') != null) return "credentials in the URL";
    if (tool.globoff_option != null and !op.globoff and std.mem.indexOfAny(u8, url, "[]{}") != null) {
        return "a curl glob; add -g to fetch it literally and cache it";
    }
    return "";
}

fn startsWithLower(s: []const u8, prefix: []const u8) bool {
    return s.len >= prefix.len and std.ascii.eqlIgnoreCase(s[0..prefix.len], prefix);
}

/// Whether a boolean option turns its setting on (wget also takes =on/=off).
fn enabled(token: Token) bool {
    if (token.negated) return false;
    const value = token.value orelse return true;
    const word = text.strip(value);
    for (off_words) |off| {
        if (std.ascii.eqlIgnoreCase(word, off)) return false;
    }
    return true;
}

/// What one curl operation (options up to --next) or a wget command asks for.
const Operation = struct {
    globoff: bool = false,
    header_authorization: std.ArrayList([]const u8) = .empty,
    user_password: ?[]const u8 = null,
    users: std.ArrayList([]const u8) = .empty, // distinct values, as Python's set
    passwords: std.ArrayList([]const u8) = .empty,
    preemptive: ?bool = null,
    challenge_first: bool = false,
    family: u8 = 0,
    verify: bool = true,
    ca_file: ?[]const u8 = null,
    ca_dir: ?[]const u8 = null,
    proxy: ?[]const u8 = null,
    env_proxies: bool = true,
    no_proxy: ?[]const u8 = null,
    protocols: std.ArrayList(Limit) = .empty, // scheme limits in first-seen order

    /// The Authorization the tool sends on its first request, if certain; else null.
    fn authorization(op: *const Operation, gpa: Allocator, tool: *const Tool) !?[]const u8 {
        const headers = op.header_authorization.items;
        if (headers.len > 0) {
            for (headers) |h| {
                if (!std.mem.eql(u8, h, headers[0])) return null;
            }
            const value = headers[headers.len - 1];
            if (value.len == 0 or std.mem.indexOfAny(u8, value, "\r\n") != null) return null;
            return value;
        }
        const preemptive = op.preemptive orelse tool.preemptive_default;
        if (!preemptive or op.challenge_first) return null;
        var credentials: []const u8 = undefined;
        if (op.user_password != null and std.mem.indexOfScalar(u8, op.user_password.?, ':') != null) {
            credentials = op.user_password.?;
        } else if (op.users.items.len == 1 and op.passwords.items.len == 1) {
            credentials = try std.mem.concat(gpa, u8, &.{ op.users.items[0], ":", op.passwords.items[0] });
        } else return null;
        const encoder = std.base64.standard.Encoder;
        const encoded = try gpa.alloc(u8, encoder.calcSize(credentials.len));
        _ = encoder.encode(encoded, credentials);
        return try std.mem.concat(gpa, u8, &.{ "Basic ", encoded });
    }

    /// The CAs the tool will check the cache-host against (none: the system's).
    fn trust(op: *const Operation, tool: *const Tool, env: Env) Trust {
        if (nonEmpty(op.ca_file) != null or nonEmpty(op.ca_dir) != null) {
            return .{ .verify = op.verify, .ca_file = op.ca_file, .ca_dir = op.ca_dir };
        }
        for (tool.ca_env) |pair| {
            const ca_file = env.nonEmpty(pair[0]);
            const ca_dir = env.nonEmpty(pair[1]);
            if (ca_file != null or ca_dir != null) return .{ .verify = op.verify, .ca_file = ca_file, .ca_dir = ca_dir };
        }
        return .{ .verify = op.verify };
    }

    /// Why a scheme limit (curl --proto, wget --https-only) keeps this URL
    /// from the cache ("" if none does).
    fn protocolReason(op: *const Operation, gpa: Allocator, tool: *const Tool, server: cachehost.CacheHost, url: []const u8) ![]const u8 {
        const server_scheme: []const u8 = if (server.https) "https" else "http";
        const url_scheme: []const u8 = if (startsWithLower(url, "https:")) "https" else "http";
        for (op.protocols.items) |limit| {
            const value = limit.value orelse continue;
            const allowed = allowedSchemes(value) orelse
                return try std.fmt.allocPrint(gpa, "--{s} {f} is not a protocol list", .{ limit.name, text.Repr{ .s = value } });
            if (!allowed.has(server.https)) {
                return try std.fmt.allocPrint(gpa, "--{s} does not allow {s}, the cache-host's scheme", .{ limit.name, server_scheme });
            }
            if (tool_.contains(tool.url_protocol_options, limit.name) and !allowed.has(std.mem.eql(u8, url_scheme, "https"))) {
                return try std.fmt.allocPrint(gpa, "--{s} does not allow {s}, the URL's scheme", .{ limit.name, url_scheme });
            }
        }
        return "";
    }

    /// Why the tool would reach the cache-host through a proxy ("" if it won't).
    fn proxyReason(op: *const Operation, tool: *const Tool, server: cachehost.CacheHost, env: Env) []const u8 {
        if (nonEmpty(op.proxy) != null) return "a proxy is set on the command line";
        if (!op.env_proxies) return "";
        const names = tool_.lookup(tool_.Names, tool.proxy_env, if (server.https) "https" else "http").?;
        const proxy = for (names) |name| {
            if (env.nonEmpty(name)) |value| break value;
        } else "";
        if (proxy.len == 0) return "";
        const no_proxy = op.no_proxy orelse for (tool.no_proxy_env) |name| {
            if (env.get(name)) |value| break value;
        } else "";
        if (bypasses(no_proxy, server.host)) return "";
        return "a proxy applies to the cache-host; add it to no_proxy";
    }
};

const Limit = struct { name: []const u8, value: ?[]const u8 };

const Schemes = struct {
    http: bool = true,
    https: bool = true,

    fn has(s: Schemes, https: bool) bool {
        return if (https) s.https else s.http;
    }
};

/// Which of http and https a curl --proto list leaves allowed (plan.allowed_schemes):
/// comma-separated names after modifiers + (allow), - (deny) or = (only this);
/// `all` is every protocol; an unknown name is ignored unless after `=`.
/// Null when curl refuses the list outright.
fn allowedSchemes(list: []const u8) ?Schemes {
    var allowed: Schemes = .{};
    var tokens = std.mem.splitScalar(u8, list, ',');
    while (tokens.next()) |raw| {
        if (raw.len == 0) continue;
        var token = raw;
        var action: u8 = '+';
        while (token.len > 0 and !std.ascii.isAlphanumeric(token[0])) {
            if (std.mem.indexOfScalar(u8, "+-=", token[0]) == null) return null;
            action = token[0];
            token = token[1..];
        }
        if (token.len == 0) return null;
        const all = std.ascii.eqlIgnoreCase(token, "all");
        const named: Schemes = .{
            .http = all or std.ascii.eqlIgnoreCase(token, "http"),
            .https = all or std.ascii.eqlIgnoreCase(token, "https"),
        };
        switch (action) {
            '-' => allowed = .{ .http = allowed.http and !named.http, .https = allowed.https and !named.https },
            '=' => allowed = named,
            else => allowed = .{ .http = allowed.http or named.http, .https = allowed.https or named.https },
        }
    }
    return allowed;
}

test "curl --proto lists" {
    try std.testing.expectEqual(Schemes{ .http = false, .https = true }, allowedSchemes("=https").?);
    try std.testing.expectEqual(Schemes{ .http = true, .https = false }, allowedSchemes(",,-https").?);
    try std.testing.expectEqual(Schemes{ .http = true, .https = true }, allowedSchemes("x=https").?);
    try std.testing.expectEqual(Schemes{ .http = false, .https = false }, allowedSchemes("=ftp").?);
    try std.testing.expectEqual(Schemes{ .http = false, .https = true }, allowedSchemes("=all,-HTTP").?);
    try std.testing.expect(allowedSchemes("=") == null);
    try std.testing.expect(allowedSchemes("*https") == null);
}

fn nonEmpty(value: ?[]const u8) ?[]const u8 {
    const v = value orelse return null;
    return if (v.len > 0) v else null;
}

/// Whether a no_proxy list exempts `host` (exact name, domain suffix or '*').
fn bypasses(no_proxy: []const u8, host_in: []const u8) bool {
    const host = std.mem.trimEnd(u8, host_in, ".");
    var entries = std.mem.splitScalar(u8, no_proxy, ',');
    while (entries.next()) |raw| {
        var entry = std.mem.trimEnd(u8, std.mem.trimStart(u8, text.strip(raw), "."), ".");
        if (text.startsWith(entry, "[") and text.endsWith(entry, "]") and entry.len >= 2) entry = entry[1 .. entry.len - 1];
        if (std.mem.eql(u8, entry, "*")) return true;
        if (entry.len == 0) continue;
        if (std.ascii.eqlIgnoreCase(host, entry)) return true;
        if (host.len > entry.len and host[host.len - entry.len - 1] == '.' and
            std.ascii.eqlIgnoreCase(host[host.len - entry.len ..], entry)) return true;
    }
    return false;
}

const Url = struct { index: ?usize, url: []const u8, op: *Operation };
const Switch = struct { name: []const u8, on: bool };

const Command = struct {
    ops: std.ArrayList(*Operation) = .empty,
    urls: std.ArrayList(Url) = .empty,
    switches: std.ArrayList(Switch) = .empty, // pass-through options in first-seen order
    methods: std.ArrayList([]const u8) = .empty,
    // What decides the fallback (Tool.fallback_statuses): the fail switch as
    // given (null: not given), options in effect or not, the output files.
    fail: ?bool = null,
    unsupervised: std.ArrayList(Switch) = .empty,
    outputs: std.ArrayList([]const u8) = .empty,
    remote_name: std.ArrayList(Switch) = .empty,
    keep: std.ArrayList(Switch) = .empty,

    /// Why the whole command passes through ("" if nothing does).
    fn blockers(command: *const Command, gpa: Allocator, tool: *const Tool, server: cachehost.CacheHost) ![]const u8 {
        for (command.switches.items) |s| {
            if (!s.on) continue;
            const reason = (if (server.https) tool_.lookup(tool_.Text, tool.https_pass_through, s.name) else null) orelse
                tool_.lookup(tool_.Text, tool.pass_through, s.name) orelse continue;
            return try std.fmt.allocPrint(gpa, "--{s} {s}", .{ s.name, reason });
        }
        for (command.methods.items) |method| {
            if (!std.mem.eql(u8, method, "GET") and !std.mem.eql(u8, method, "HEAD")) {
                return try std.fmt.allocPrint(gpa, "uses the HTTP method {f}", .{text.Repr{ .s = method }});
            }
        }
        return "";
    }
};

/// Record an option's state in a list of switches: the last one given wins.
fn setSwitch(gpa: Allocator, switches: *std.ArrayList(Switch), name: []const u8, on: bool) !void {
    for (switches.items) |*s| {
        if (std.mem.eql(u8, s.name, name)) {
            s.on = on;
            return;
        }
    }
    try switches.append(gpa, .{ .name = name, .on = on });
}

fn read(gpa: Allocator, tool: *const Tool, argv: []const []const u8, posixly_correct: bool, why: *scan_.Why) scan_.Error!Command {
    const tokens = try scan_.scan(&tool.table, argv, posixly_correct, why);
    var command: Command = .{};
    try command.ops.append(gpa, try newOperation(gpa));
    for (tokens) |raw| {
        var token = raw;
        if (tool_.optEql(tool.execute_option, token.name) and token.value != null) {
            token = try execute(gpa, tool, token, why);
        }
        try apply(gpa, tool, &command, token);
    }
    return command;
}

fn newOperation(gpa: Allocator) !*Operation {
    const op = try gpa.create(Operation);
    op.* = .{};
    return op;
}

/// wget -e 'command = value' as the long option it stands for.
fn execute(gpa: Allocator, tool: *const Tool, token: Token, why: *scan_.Why) scan_.Error!Token {
    const value = token.value.?;
    const equals = std.mem.indexOfScalar(u8, value, '=') orelse
        return why.fail("-e {f} is not 'command = value'", .{text.Repr{ .s = value }});
    const command = value[0..equals];
    var key: std.ArrayList(u8) = .empty;
    for (text.strip(command)) |c| {
        if (c != '-' and c != '_') try key.append(gpa, std.ascii.toLower(c));
    }
    if (key.items.len == 0) return why.fail("-e {f} is not 'command = value'", .{text.Repr{ .s = value }});
    if (tool_.contains(tool.execute_ignored, key.items)) {
        return .{ .index = token.index, .name = "", .value = null, .value_index = null };
    }
    const name = tool_.lookup(tool_.Text, tool.execute_aliases, key.items) orelse for (tool.table.long) |option| {
        if (equalWithoutDashes(option.name, key.items)) break option.name;
    } else return why.fail("-e {s}: not a command the shim reads", .{text.strip(command)});
    return .{ .index = token.index, .name = name, .value = text.strip(value[equals + 1 ..]), .value_index = null };
}

fn equalWithoutDashes(name: []const u8, key: []const u8) bool {
    var i: usize = 0;
    for (name) |c| {
        if (c == '-') continue;
        if (i >= key.len or key[i] != c) return false;
        i += 1;
    }
    return i == key.len;
}

fn apply(gpa: Allocator, tool: *const Tool, command: *Command, token: Token) !void {
    const op = command.ops.items[command.ops.items.len - 1];
    const name = token.name;
    if (name.len == 0) { // an operand: a URL to the tool (or nothing, from an ignored -e)
        if (token.value) |value| try command.urls.append(gpa, .{ .index = token.value_index, .url = value, .op = op });
        return;
    }
    const is_arg = tool.table.kind(name) == .arg;
    const value = if (is_arg) token.value else null;
    const on = is_arg or enabled(token);
    if (tool_.contains(tool.url_options, name) and value != null) {
        try command.urls.append(gpa, .{ .index = token.value_index, .url = value.?, .op = op });
    } else if (tool_.optEql(tool.next_option, name)) {
        try command.ops.append(gpa, try newOperation(gpa));
    } else if (tool_.lookup(tool_.Text, tool.pass_through, name) != null or
        tool_.lookup(tool_.Text, tool.https_pass_through, name) != null)
    {
        try setSwitch(gpa, &command.switches, name, on);
    } else if (tool_.optEql(tool.fail_option, name)) {
        command.fail = on;
    } else if (tool_.lookup(tool_.Text, tool.unsupervised, name) != null) {
        try setSwitch(gpa, &command.unsupervised, name, on);
    } else if (tool_.contains(tool.output_options, name) and value != null) {
        try command.outputs.append(gpa, value.?);
    } else if (tool_.contains(tool.remote_name_options, name)) {
        try setSwitch(gpa, &command.remote_name, name, on);
    } else if (tool_.contains(tool.keep_options, name)) {
        try setSwitch(gpa, &command.keep, name, on);
    } else if (tool_.contains(tool.method_options, name) and value != null) {
        try command.methods.append(gpa, value.?);
    } else if (tool_.optEql(tool.globoff_option, name)) {
        op.globoff = on;
    } else if (tool_.contains(tool.header_options, name) and value != null) {
        try header(gpa, op, value.?);
    } else if (tool_.contains(tool.user_password_options, name)) {
        op.user_password = value;
    } else if (tool_.contains(tool.user_options, name) and value != null) {
        try addDistinct(gpa, &op.users, value.?);
    } else if (tool_.contains(tool.password_options, name) and value != null) {
        try addDistinct(gpa, &op.passwords, value.?);
    } else if (tool_.lookup(tool_.Flag, tool.preemptive, name)) |sends_first| {
        if (sends_first) {
            op.preemptive = on;
        } else if (on) {
            op.challenge_first = true;
        }
    } else if (tool_.lookup(tool_.Number, tool.family_options, name)) |family| {
        op.family = if (on) family else 0;
    } else if (tool_.contains(tool.ca_file_options, name)) {
        op.ca_file = value;
    } else if (tool_.contains(tool.ca_dir_options, name)) {
        op.ca_dir = value;
    } else if (tool_.lookup(tool_.Flag, tool.no_verify, name)) |turns_off| {
        op.verify = on != turns_off;
    } else if (tool_.lookup(tool_.Flag, tool.proxy_options, name)) |empty_turns_off| {
        if (nonEmpty(value)) |proxy| {
            op.proxy = proxy;
        } else if (empty_turns_off) {
            op.env_proxies = false;
        }
    } else if (tool_.optEql(tool.proxy_switch, name)) {
        op.env_proxies = on;
    } else if (tool_.optEql(tool.no_proxy_option, name)) {
        op.no_proxy = value;
    } else if (tool_.lookup(tool_.Text, tool.protocol_options, name)) |fixed| {
        const limit: ?[]const u8 = if (!on) null else if (is_arg) value else fixed;
        for (op.protocols.items) |*seen| {
            if (std.mem.eql(u8, seen.name, name)) {
                seen.value = limit;
                return;
            }
        } else try op.protocols.append(gpa, .{ .name = name, .value = limit });
    }
}

fn addDistinct(gpa: Allocator, set: *std.ArrayList([]const u8), value: []const u8) !void {
    for (set.items) |seen| {
        if (std.mem.eql(u8, seen, value)) return;
    }
    try set.append(gpa, value);
}

fn header(gpa: Allocator, op: *Operation, line: []const u8) !void {
    if (text.strip(line).len == 0) { // wget --header= clears the headers given before
        op.header_authorization.clearRetainingCapacity();
        return;
    }
    var name: []const u8 = undefined;
    var value: []const u8 = undefined;
    if (std.mem.indexOfScalar(u8, line, ':')) |colon| {
        name = line[0..colon];
        value = line[colon + 1 ..];
    } else {
        const trimmed = text.rstrip(line);
        if (!text.endsWith(trimmed, ";")) return;
        name = trimmed[0 .. trimmed.len - 1]; // curl's "Name;" sends the header empty
        value = "";
    }
    if (std.ascii.eqlIgnoreCase(text.strip(name), "authorization")) {
        try op.header_authorization.append(gpa, text.strip(value));
    }
}
