//! The environment as the Python shim's `os.environ` sees it: the first
//! `NAME=` entry wins (CPython builds os.environ with setdefault); then
//! what a shims.conf adds (conf.zig).

const std = @import("std");

pub const Env = struct {
    block: []const ?[*:0]const u8,
    extra: []const ?[*:0]const u8 = &.{}, // from shims.conf: only what `block` doesn't set

    pub fn get(env: Env, name: []const u8) ?[]const u8 {
        for ([_][]const ?[*:0]const u8{ env.block, env.extra }) |entries| {
            for (entries) |entry| {
                const line = std.mem.span(entry orelse continue);
                if (line.len > name.len and line[name.len] == '=' and std.mem.startsWith(u8, line, name)) {
                    return line[name.len + 1 ..];
                }
            }
        }
        return null;
    }

    /// env.get(name) or "" (Python's `env.get(name, "")`).
    pub fn text(env: Env, name: []const u8) []const u8 {
        return env.get(name) orelse "";
    }

    pub fn has(env: Env, name: []const u8) bool {
        return env.get(name) != null;
    }

    /// Python's `env.get(name) or None`: unset and empty are both null.
    pub fn nonEmpty(env: Env, name: []const u8) ?[]const u8 {
        const value = env.get(name) orelse return null;
        return if (value.len > 0) value else null;
    }
};
