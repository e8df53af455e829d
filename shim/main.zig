//! The native shim: one static binary that acts as curl or wget by the name
//! it is run as (curlwithcache or curl; wgetwithcache or wget), with the
//! Python shim's behaviour (src/withcache/shim/entry.py and run.py): find
//! the real tool, and with no cache-host set (no variable, no shims.conf)
//! exec it at once, with no parsing and no network; otherwise plan the
//! command against the cache,
//! write WITHCACHE_DEBUG notes, and exec the tool with the planned argv (a
//! one-URL hit runs as a child instead: if the cache fails it, the command
//! runs as written).
//! Nothing but those notes and the two fatal messages is ever printed.

const std = @import("std");
const c = std.c;
const options = @import("options.zig");
const tables = @import("tables.zig");
const Tool = @import("tool.zig").Tool;
const Env = @import("env.zig").Env;
const plan = @import("plan.zig");
const probe = @import("probe.zig");
const realtool = @import("realtool.zig");
const text = @import("text.zig");
const cachehost = @import("cachehost.zig");
const conf = @import("conf.zig");

pub const panic = std.debug.simple_panic;
pub const std_options: std.Options = .{ .enable_segfault_handler = false };

const gpa = std.heap.c_allocator; // never freed: the process execs the tool

pub fn main(init: std.process.Init.Minimal) u8 {
    const argv = init.args.vector;
    const envp = init.environ.block.slice;
    var env: Env = .{ .block = envp };
    const called = std.mem.span(argv[0]);
    const name = called[(if (std.mem.lastIndexOfScalar(u8, called, '/')) |i| i + 1 else 0)..];
    const tool: *const Tool = if (eqlAny(name, &.{ "curl", "curlwithcache" }))
        &tables.curl
    else if (eqlAny(name, &.{ "wget", "wgetwithcache" }))
        &tables.wget
    else {
        say("withcache-shim: run me as curl, wget, curlwithcache or wgetwithcache (a link to this file)\n", .{});
        return 2;
    };
    const pinned = env.text(tool.real_env);
    const real = realtool.find(tool.name, pinned, env.get("PATH") orelse "/bin:/usr/bin") catch null orelse {
        if (pinned.len > 0) {
            say("{s}withcache: no real {s} found (looked in {s}={s})\n", .{ tool.name, tool.name, tool.real_env, pinned });
        } else {
            say("{s}withcache: no real {s} found (looked in PATH)\n", .{ tool.name, tool.name });
        }
        return 127;
    };
    const debug = !std.mem.eql(u8, env.get("WITHCACHE_DEBUG") orelse "0", "0") and env.text("WITHCACHE_DEBUG").len > 0;
    if (!env.has(tool.server_env) and !env.has("WITHCACHE_SERVER")) {
        if (conf.find(gpa, env)) |found| env = conf.apply(gpa, tool.name, env, found, debug) catch env;
    }
    if (plan.serverSetting(tool, env).len == 0) {
        if (debug) say("withcache: {s}: passed through: no cache-host set\n", .{tool.name});
        return execAsWritten(real, tool, argv, envp);
    }
    const args = gpa.alloc([]const u8, argv.len - 1) catch return execAsWritten(real, tool, argv, envp);
    for (argv[1..], args) |arg, *slot| slot.* = std.mem.span(arg);
    const planned = rewrite(tool, args, env, real, debug);
    const switch_words: []const []const u8 = if (planned.fail_switch) |word| &.{word} else &.{};
    const words = std.mem.concat(gpa, []const u8, &.{ switch_words, planned.argv }) catch return execAsWritten(real, tool, argv, envp);
    const exec_argv = gpa.allocSentinel(?[*:0]const u8, words.len + 1, null) catch return execAsWritten(real, tool, argv, envp);
    exec_argv[0] = argv0(tool);
    for (words, exec_argv[1..]) |arg, *slot| {
        slot.* = (gpa.dupeSentinel(u8, arg, 0) catch return execAsWritten(real, tool, argv, envp)).ptr;
    }
    if (planned.fallback.len == 0) return exec(real, tool, exec_argv, envp);
    supervise(real, tool, exec_argv, envp, planned.fallback, debug); // returns only if the cache failed
    return execAsWritten(real, tool, argv, envp);
}

// Signals passed on to the tool the shim waits for (run.py's _PASSED_ON).
const passed_on = [_]c_int{ 2, 15, 1, 3 }; // SIGINT, SIGTERM, SIGHUP, SIGQUIT
var child_pid: c.pid_t = 0;

fn passOn(sig: c_int) callconv(.c) void {
    if (child_pid > 0) {
        _ = c.kill(child_pid, @enumFromInt(sig));
        return;
    }
    _ = signal(sig, sig_dfl); // before the spawn returned: the tool never saw it, so end now
    _ = raise(sig);
}

/// Run the planned hit as a child (run.py's supervise): end as it ended, unless
/// its exit status is in `fallback` (the cache failed before anything
/// irrevocable was written); then return, and the command runs as written.
fn supervise(real: [:0]const u8, tool: *const Tool, argv: [:null]const ?[*:0]const u8, envp: [:null]const ?[*:0]const u8, fallback: []const u8, debug: bool) void {
    // A handler is reset in the spawned tool; an ignored signal (a background
    // job's SIGINT) stays ignored there, as it would through exec.
    var passed: [passed_on.len]bool = @splat(false);
    for (passed_on, &passed) |sig, *on| {
        on.* = signal(sig, @intFromPtr(&passOn)) != sig_ign;
        if (!on.*) _ = signal(sig, sig_ign);
    }
    var pid: c.pid_t = 0;
    if (posix_spawn(&pid, real, null, null, argv.ptr, envp.ptr) != 0) {
        restore(passed);
        return; // the command as written fails the same way, with the tool's own message
    }
    child_pid = pid;
    var status: c_int = 0;
    while (c.waitpid(pid, &status, 0) < 0) {
        if (c._errno().* != @intFromEnum(c.E.INTR)) return; // as os.waitpid raising in run.py
    }
    const word: u32 = @bitCast(status);
    const sig: u32 = word & 0x7f;
    if (sig != 0) { // killed by a signal: the shim ends the same way
        _ = signal(@intCast(sig), sig_dfl);
        _ = raise(@intCast(sig));
        c._exit(@intCast(128 + sig));
    }
    const code: u8 = @truncate(word >> 8);
    if (std.mem.indexOfScalar(u8, fallback, code) == null) c._exit(code);
    restore(passed);
    if (debug) say("withcache: {s}: the cache failed (exit {d}): running the command as written\n", .{ tool.name, code });
}

const sig_dfl: usize = 0;
const sig_ign: usize = 1;

fn restore(passed: [passed_on.len]bool) void {
    for (passed_on, passed) |sig, on| {
        if (on) _ = signal(sig, sig_dfl);
    }
}

extern "c" fn posix_spawn(pid: *c.pid_t, path: [*:0]const u8, file_actions: ?*const anyopaque, attrp: ?*const anyopaque, argv: [*:null]const ?[*:0]const u8, envp: [*:null]const ?[*:0]const u8) c_int;
extern "c" fn signal(sig: c_int, handler: usize) usize; // a handler, SIG_DFL (0) or SIG_IGN (1)
extern "c" fn raise(sig: c_int) c_int;

/// The command as written, with no allocation: the kernel's argv array (it
/// ends with a null pointer) with argv[0] swapped in place.
fn execAsWritten(real: [:0]const u8, tool: *const Tool, argv: []const [*:0]const u8, envp: [:null]const ?[*:0]const u8) u8 {
    const vector: [*:null]?[*:0]const u8 = @ptrCast(@constCast(argv.ptr));
    vector[0] = argv0(tool);
    return exec(real, tool, vector[0..argv.len :null], envp);
}

fn eqlAny(name: []const u8, names: []const []const u8) bool {
    for (names) |n| {
        if (std.mem.eql(u8, name, n)) return true;
    }
    return false;
}

/// Write one message to stderr (unbuffered, like os.write in the Python shim).
fn say(comptime fmt: []const u8, args: anytype) void {
    const line = std.fmt.allocPrint(gpa, fmt, args) catch return;
    text.writeStderr(line);
}


/// The plan to run; with WITHCACHE_DEBUG set, one note a line on stderr.
fn rewrite(tool: *const Tool, args: [][]const u8, env: Env, real: [:0]const u8, debug: bool) plan.Plan {
    var asker: Asker = .{ .seconds = probe.budget(env), .tool = tool, .real = real, .env = env };
    const result = plan.plan(gpa, tool, args, env, .{ .context = &asker, .ask = Asker.ask }) catch |err| blk: {
        const notes = gpa.alloc([]const u8, 1) catch return .{ .argv = args, .notes = &.{} };
        notes[0] = std.fmt.allocPrint(gpa, "passed through: shim error: {t}", .{err}) catch "passed through: shim error";
        break :blk plan.Plan{ .argv = args, .notes = notes };
    };
    if (debug) {
        var out: std.Io.Writer.Allocating = .init(gpa);
        for (result.notes) |note| {
            out.writer.print("withcache: {s}: ", .{tool.name}) catch break;
            text.writeReplaced(&out.writer, note) catch break;
            out.writer.writeByte('\n') catch break;
        }
        text.writeStderr(out.written());
    }
    return result;
}

const Asker = struct {
    seconds: f64,
    tool: *const Tool,
    real: [:0]const u8,
    env: Env,

    fn ask(context: *anyopaque, server: cachehost.CacheHost, requests: []const plan.Request, answers: []plan.Answer) void {
        const asker: *Asker = @ptrCast(@alignCast(context));
        const with_tool: ?probe.ToolProbe = if (server.https or options.probe_with_tool)
            .{ .path = asker.real, .is_curl = std.mem.eql(u8, asker.tool.name, "curl"), .env = asker.env }
        else
            null;
        probe.probe(server, requests, answers, asker.seconds, with_tool);
    }
};

/// The real tool runs as `curl` or `wget`, whatever name the shim ran as.
fn argv0(tool: *const Tool) [*:0]const u8 {
    return if (std.mem.eql(u8, tool.name, "curl")) "curl" else "wget";
}

/// Run the real tool; only returns (126) if that fails.
fn exec(real: [:0]const u8, tool: *const Tool, argv: [:null]const ?[*:0]const u8, envp: [:null]const ?[*:0]const u8) u8 {
    _ = c.execve(real, argv.ptr, envp.ptr);
    say("{s}withcache: cannot run {s}: {s}\n", .{ tool.name, real, std.mem.span(strerror(c._errno().*)) });
    return 126;
}

extern "c" fn strerror(errnum: c_int) [*:0]const u8;

test {
    _ = text;
    _ = cachehost;
    _ = probe;
    _ = @import("keys.zig");
    _ = plan;
    _ = conf;
}
