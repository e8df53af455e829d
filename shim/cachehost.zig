//! The cache-host's address from WITHCACHE_SERVER, read as cachehost.parse()
//! reads it: `host:port`, `http://host:port` or `https://host[:port]/prefix`.

const std = @import("std");
const text = @import("text.zig");

pub const CacheHost = struct {
    https: bool,
    host: []const u8, // name or IP literal, without brackets
    port: u16,
    base: []const u8, // scheme://netloc[/prefix], no trailing slash
    prefix: []const u8, // "" or "/prefix"
    netloc: []const u8, // what the Host header carries
};

/// A cache-host, or the reason (as the Python shim words it) in `why`.
pub fn parse(gpa: std.mem.Allocator, setting: []const u8, why: *[]const u8) !?CacheHost {
    var full = text.strip(setting);
    if (std.mem.indexOf(u8, full, "://") == null) full = try std.mem.concat(gpa, u8, &.{ "http://", full });
    const split = std.mem.indexOf(u8, full, "://").?;
    const scheme = try text.lowerAlloc(gpa, full[0..split]);
    const rest = full[split + 3 ..];
    const https = std.mem.eql(u8, scheme, "https");
    if (!https and !std.mem.eql(u8, scheme, "http")) {
        why.* = try std.fmt.allocPrint(gpa, "{s}:// is not http:// or https://", .{scheme});
        return null;
    }
    const slash = std.mem.indexOfScalar(u8, rest, '/');
    const netloc = rest[0 .. slash orelse rest.len];
    const path = if (slash) |i| rest[i + 1 ..] else "";
    if (netloc.len == 0 or std.mem.indexOfAny(u8, netloc, "@?# \t") != null) {
        why.* = try std.fmt.allocPrint(gpa, "{f} is not host[:port]", .{text.Repr{ .s = netloc }});
        return null;
    }
    if (std.mem.indexOfAny(u8, path, "?# \t") != null) {
        why.* = "the cache-host URL can't have a query or fragment";
        return null;
    }
    var host: []const u8 = undefined;
    var port_text: []const u8 = undefined;
    if (netloc[0] == '[') {
        const end = std.mem.indexOfScalar(u8, netloc, ']') orelse {
            why.* = try std.fmt.allocPrint(gpa, "{f} is not [address]:port", .{text.Repr{ .s = netloc }});
            return null;
        };
        host = netloc[1..end];
        port_text = netloc[end + 1 ..];
        if (port_text.len > 0 and port_text[0] != ':') {
            why.* = try std.fmt.allocPrint(gpa, "{f} is not [address]:port", .{text.Repr{ .s = netloc }});
            return null;
        }
        if (port_text.len > 0) port_text = port_text[1..];
    } else {
        const colon = std.mem.indexOfScalar(u8, netloc, ':');
        host = netloc[0 .. colon orelse netloc.len];
        port_text = if (colon) |i| netloc[i + 1 ..] else "";
    }
    if (host.len == 0) {
        why.* = "no host name";
        return null;
    }
    var port: u64 = if (https) 443 else 80;
    if (port_text.len > 0) {
        for (port_text) |c| {
            if (c < '0' or c > '9') {
                why.* = try std.fmt.allocPrint(gpa, "port {f} is not a number", .{text.Repr{ .s = port_text }});
                return null;
            }
        }
        const digits = std.mem.trimStart(u8, port_text, "0");
        port = if (digits.len > 5) 65536 else std.fmt.parseInt(u64, port_text, 10) catch 65536;
        if (port == 0 or port > 65535) {
            why.* = try std.fmt.allocPrint(gpa, "port {s} is out of range", .{if (digits.len == 0) "0" else digits});
            return null;
        }
    }
    var prefix: []const u8 = "";
    if (slash != null) prefix = std.mem.trimEnd(u8, try std.mem.concat(gpa, u8, &.{ "/", path }), "/");
    const base = try std.mem.concat(gpa, u8, &.{ scheme, "://", netloc, prefix });
    return .{ .https = https, .host = host, .port = @intCast(port), .base = base, .prefix = prefix, .netloc = netloc };
}

test "parse like cachehost.parse" {
    var arena = std.heap.ArenaAllocator.init(std.testing.allocator);
    defer arena.deinit();
    var why: []const u8 = "";
    const host = (try parse(arena.allocator(), " HTTPS://[::1]/withcache/ ", &why)).?;
    try std.testing.expectEqualStrings("https://[::1]/withcache", host.base);
    try std.testing.expectEqualStrings("::1", host.host);
    try std.testing.expectEqual(443, host.port);
    try std.testing.expect(try parse(arena.allocator(), "cache:0099999", &why) == null);
    try std.testing.expectEqualStrings("port 99999 is out of range", why);
}
