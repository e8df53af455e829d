//! Find the real curl or wget (entry.find_real_tool): REAL_CURL/REAL_WGET
//! when set, else the first one on PATH that isn't a shim, through symlinks.
//! "Not a shim" means its real path is neither this binary nor a file with
//! one of the shim names, so a PATH that lists a shim as `curl` can't loop.

const std = @import("std");
const c = std.c;
const tables = @import("tables.zig");
const tool_ = @import("tool.zig");

const gpa = std.heap.c_allocator;

/// The real tool's path, or null if none qualifies.
pub fn find(tool: []const u8, pinned: []const u8, path: []const u8) !?[:0]const u8 {
    const me = try self();
    if (std.mem.indexOfScalar(u8, pinned, '/') != null) {
        const candidate = try gpa.dupeSentinel(u8, pinned, 0);
        return if (isReal(candidate, me)) candidate else null;
    }
    var dirs = std.mem.splitScalar(u8, path, ':');
    while (dirs.next()) |dir_or_empty| {
        const dir = if (dir_or_empty.len == 0) "." else dir_or_empty;
        const name = if (pinned.len > 0) pinned else tool;
        const sep: []const u8 = if (std.mem.endsWith(u8, dir, "/")) "" else "/";
        const candidate = try std.mem.concatWithSentinel(gpa, u8, &.{ dir, sep, name }, 0);
        if (isReal(candidate, me)) return candidate;
    }
    return null;
}

/// This binary's real path (argv[0] may be a bare name found on PATH).
fn self() ![]const u8 {
    var buf: [std.posix.PATH_MAX]u8 = undefined;
    const n = c.readlink("/proc/self/exe", &buf, buf.len);
    if (n <= 0) return "";
    return gpa.dupe(u8, buf[0..@intCast(n)]);
}

fn isReal(candidate: [:0]const u8, me: []const u8) bool {
    const linux = std.os.linux;
    var st: linux.Statx = undefined; // statx: libc's struct stat differs between targets
    if (linux.errno(linux.statx(linux.AT.FDCWD, candidate, 0, .{ .TYPE = true }, &st)) != .SUCCESS) return false;
    if (!linux.S.ISREG(st.mode)) return false;
    if (c.access(candidate, c.X_OK) != 0) return false;
    var buf: [std.posix.PATH_MAX]u8 = undefined;
    const resolved = std.mem.span(c.realpath(candidate, &buf) orelse return false);
    if (std.mem.eql(u8, resolved, me)) return false;
    const base = resolved[(if (std.mem.lastIndexOfScalar(u8, resolved, '/')) |i| i + 1 else 0)..];
    return !tool_.contains(tables.shim_names, base);
}
