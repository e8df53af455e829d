//! The serve path of an origin URL on the cache-host, as keys.serve_path()
//! builds it: `/b/<unpadded URL-safe base64 of the URL>/<basename>[?query]`.

const std = @import("std");

/// Path and query that serve `url` (an http(s) URL, valid UTF-8) on the cache-host.
pub fn servePath(gpa: std.mem.Allocator, url: []const u8) ![]u8 {
    const path, const query = pathAndQuery(url);
    const base64 = std.base64.url_safe_no_pad.Encoder;
    const token = try gpa.alloc(u8, base64.calcSize(url.len));
    _ = base64.encode(token, url);
    const name = path[(if (std.mem.lastIndexOfScalar(u8, path, '/')) |i| i + 1 else 0)..];
    if (query.len > 0) return std.fmt.allocPrint(gpa, "/b/{s}/{s}?{s}", .{ token, name, query });
    return std.fmt.allocPrint(gpa, "/b/{s}/{s}", .{ token, name });
}

/// Path and query of a URL, split as urlsplit splits them (keys._path_and_query).
fn pathAndQuery(url: []const u8) struct { []const u8, []const u8 } {
    var rest = url;
    if (std.mem.indexOf(u8, url, "://")) |scheme_end| {
        if (scheme_end > 0) {
            rest = url[scheme_end + 3 ..];
            const end = std.mem.indexOfAny(u8, rest, "/?#") orelse rest.len;
            rest = rest[end..];
        }
    }
    if (std.mem.indexOfScalar(u8, rest, '#')) |i| rest = rest[0..i];
    if (std.mem.indexOfScalar(u8, rest, '?')) |i| return .{ rest[0..i], rest[i + 1 ..] };
    return .{ rest, "" };
}

test "serve path" {
    var arena = std.heap.ArenaAllocator.init(std.testing.allocator);
    defer arena.deinit();
    const path = try servePath(arena.allocator(), "https://example.com/cuda.run");
    try std.testing.expectEqualStrings("/b/aHR0cHM6Ly9leGFtcGxlLmNvbS9jdWRhLnJ1bg/cuda.run", path);
}
