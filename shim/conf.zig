//! shims.conf, found as entry.find_conf finds it and read as conf.py reads
//! it: the cache-host for a shim run where the environment was scrubbed
//! (sudo, cron, systemd, `env -i`). Looked for only when no cache-host
//! variable is set; a miss costs an open() each. Its keys, the system path
//! and the size limit come from the Python shim (tables.zig); a line it
//! can't use is skipped with a warning under WITHCACHE_DEBUG, never an error.

const std = @import("std");
const c = std.c;
const tables = @import("tables.zig");
const Env = @import("env.zig").Env;
const text = @import("text.zig");
const cachehost = @import("cachehost.zig");
const probe = @import("probe.zig");

pub const Found = struct { path: []const u8, data: []const u8 };

/// The first readable of $XDG_CONFIG_HOME (else ~/.config) /withcache/shims.conf
/// and the system one, with its first conf_max_bytes + 1 bytes; null if none.
pub fn find(gpa: std.mem.Allocator, env: Env) ?Found {
    var buf: [std.posix.PATH_MAX]u8 = undefined;
    const xdg = env.text("XDG_CONFIG_HOME");
    const home = env.text("HOME");
    const user: ?[:0]const u8 = if (text.startsWith(xdg, "/"))
        std.mem.printSentinel(&buf, "{s}/withcache/shims.conf", .{xdg}, 0) catch null
    else if (text.startsWith(home, "/"))
        std.mem.printSentinel(&buf, "{s}/.config/withcache/shims.conf", .{home}, 0) catch null
    else
        null;
    if (user) |path| {
        if (read(gpa, path)) |data| return .{ .path = gpa.dupe(u8, path) catch return null, .data = data };
    }
    if (read(gpa, tables.system_conf)) |data| return .{ .path = tables.system_conf, .data = data };
    return null;
}

fn read(gpa: std.mem.Allocator, path: [:0]const u8) ?[]const u8 {
    const fd = c.open(path.ptr, .{ .ACCMODE = .RDONLY, .CLOEXEC = true });
    if (fd < 0) return null;
    defer _ = c.close(fd);
    const buf = gpa.alloc(u8, tables.conf_max_bytes + 1) catch return null;
    const n = c.read(fd, buf.ptr, buf.len); // a regular file reads whole
    if (n < 0) return null; // a folder, say
    return buf[0..@intCast(n)];
}

/// `env` with the file's variables after its own (a variable already set
/// wins); with `debug`, where they came from and one warning per skipped line.
pub fn apply(gpa: std.mem.Allocator, tool: []const u8, env: Env, found: Found, debug: bool) !Env {
    var values: [tables.conf_variables.len]?[]const u8 = @splat(null);
    var notes: std.Io.Writer.Allocating = .init(gpa);
    const w = &notes.writer;
    try w.print("withcache: {s}: settings from ", .{tool});
    try text.writeReplaced(w, found.path);
    try w.writeByte('\n');
    if (found.data.len > tables.conf_max_bytes) {
        try warn(w, tool, found.path);
        try w.print("longer than {d} bytes; not read\n", .{tables.conf_max_bytes});
    } else {
        var lines = std.mem.splitScalar(u8, found.data, '\n');
        var number: usize = 0;
        while (lines.next()) |raw| {
            number += 1;
            const line = text.strip(raw[0 .. std.mem.indexOfScalar(u8, raw, '#') orelse raw.len]);
            if (line.len == 0) continue;
            var problem: std.Io.Writer.Allocating = .init(gpa);
            if (std.mem.indexOfScalar(u8, line, '=')) |equals| {
                const key = text.strip(line[0..equals]);
                const value = text.strip(line[equals + 1 ..]);
                if (try check(gpa, &problem.writer, key, value)) |slot| values[slot] = value;
            } else {
                try problem.writer.writeAll("not 'key = value'");
            }
            if (problem.written().len > 0) {
                try warn(w, tool, found.path);
                try w.print("line {d}: ", .{number});
                try text.writeReplaced(w, problem.written());
                try w.writeAll("; skipped\n");
            }
        }
    }
    if (debug) text.writeStderr(notes.written());
    var extra: std.ArrayList(?[*:0]const u8) = .empty;
    for (tables.conf_variables, values) |variable, value| {
        const v = value orelse continue;
        try extra.append(gpa, (try std.mem.concatWithSentinel(gpa, u8, &.{ variable.value, "=", v }, 0)).ptr);
    }
    return .{ .block = env.block, .extra = extra.items };
}

fn warn(w: *std.Io.Writer, tool: []const u8, path: []const u8) !void {
    try w.print("withcache: {s}: ", .{tool});
    try text.writeReplaced(w, path);
    try w.writeAll(": ");
}

/// The slot of a usable `key = value`, or null with the problem written.
fn check(gpa: std.mem.Allocator, problem: *std.Io.Writer, key: []const u8, value: []const u8) !?usize {
    const slot = for (tables.conf_variables, 0..) |variable, i| {
        if (std.mem.eql(u8, variable.key, key)) break i;
    } else {
        try problem.print("unknown key {f}", .{text.Repr{ .s = key }});
        return null;
    };
    if (std.mem.eql(u8, key, "probe_timeout")) {
        if (probe.budgetOf(value) == null) {
            try problem.print("bad probe_timeout {f}: give seconds, more than 0 and at most 600", .{text.Repr{ .s = value }});
            return null;
        }
    } else if (value.len > 0) { // empty: the shim is off for that tool, as with the variable
        var why: []const u8 = "";
        if (try cachehost.parse(gpa, value, &why) == null) {
            try problem.print("bad {s} {f}: {s}", .{ key, text.Repr{ .s = value }, why });
            return null;
        }
    }
    return slot;
}
