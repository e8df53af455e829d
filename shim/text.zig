//! The few Python string rules the shim's decisions and notes depend on,
//! over the raw bytes of argv and the environment (Python sees them as UTF-8
//! with surrogateescape): str.strip(), repr(), and how a note is written to
//! stderr (an undecodable byte becomes '?'). Pure: no I/O.

const std = @import("std");

/// str.strip(): Unicode whitespace off both ends.
pub fn strip(s: []const u8) []const u8 {
    return rstrip(lstrip(s));
}

pub fn lstrip(s: []const u8) []const u8 {
    var i: usize = 0;
    while (i < s.len) {
        const n = spaceAt(s, i);
        if (n == 0) break;
        i += n;
    }
    return s[i..];
}

pub fn rstrip(s: []const u8) []const u8 {
    var end = s.len;
    while (end > 0) {
        // A space is 1 to 3 bytes long; try each length ending here.
        var n: usize = 1;
        const found = while (n <= 3 and n <= end) : (n += 1) {
            if (spaceAt(s[0..end], end - n) == n) break n;
        } else 0;
        if (found == 0) break;
        end -= found;
    }
    return s[0..end];
}

/// Length of the whitespace character at s[i] (0 if none), as str.isspace() sees it.
fn spaceAt(s: []const u8, i: usize) usize {
    const c = s[i];
    if (c < 0x80) return if ((c >= 0x09 and c <= 0x0d) or (c >= 0x1c and c <= 0x20)) 1 else 0;
    const n = std.unicode.utf8ByteSequenceLength(c) catch return 0;
    if (i + n > s.len) return 0;
    const point = std.unicode.utf8Decode(s[i .. i + n]) catch return 0;
    return switch (point) {
        0x85, 0xa0, 0x1680, 0x2000...0x200a, 0x2028, 0x2029, 0x202f, 0x205f, 0x3000 => n,
        else => 0,
    };
}

pub fn startsWith(s: []const u8, prefix: []const u8) bool {
    return std.mem.startsWith(u8, s, prefix);
}

pub fn endsWith(s: []const u8, suffix: []const u8) bool {
    return std.mem.endsWith(u8, s, suffix);
}

pub fn lowerAlloc(gpa: std.mem.Allocator, s: []const u8) ![]u8 {
    return std.ascii.allocLowerString(gpa, s);
}

/// repr() of a str: quoted, with Python's escapes ({f} in a format string).
pub const Repr = struct {
    s: []const u8,

    pub fn format(r: Repr, w: *std.Io.Writer) std.Io.Writer.Error!void {
        const has_single = std.mem.indexOfScalar(u8, r.s, '\'') != null;
        const has_double = std.mem.indexOfScalar(u8, r.s, '"') != null;
        const quote: u8 = if (has_single and !has_double) '"' else '\'';
        try w.writeByte(quote);
        var i: usize = 0;
        while (i < r.s.len) {
            const c = r.s[i];
            if (c < 0x80) {
                switch (c) {
                    '\\' => try w.writeAll("\\\\"),
                    '\t' => try w.writeAll("\\t"),
                    '\n' => try w.writeAll("\\n"),
                    '\r' => try w.writeAll("\\r"),
                    0...8, 0x0b, 0x0c, 0x0e...0x1f, 0x7f => try w.print("\\x{x:0>2}", .{c}),
                    else => {
                        if (c == quote) try w.writeByte('\\');
                        try w.writeByte(c);
                    },
                }
                i += 1;
                continue;
            }
            const n = validAt(r.s, i);
            if (n == 0) { // an undecodable byte: Python holds it as a lone surrogate
                try w.print("\\udc{x:0>2}", .{c});
                i += 1;
                continue;
            }
            const point = std.unicode.utf8Decode(r.s[i .. i + n]) catch unreachable;
            if (printable(point)) {
                try w.writeAll(r.s[i .. i + n]);
            } else if (point <= 0xff) {
                try w.print("\\x{x:0>2}", .{point});
            } else if (point <= 0xffff) {
                try w.print("\\u{x:0>4}", .{point});
            } else {
                try w.print("\\U{x:0>8}", .{point});
            }
            i += n;
        }
        try w.writeByte(quote);
    }
};

/// str.isprintable() for a non-ASCII code point, for the characters a
/// command line may plausibly hold: controls, format characters, separators
/// and unassigned planes are not printable (an approximation of the Unicode
/// database that Python consults; only a repr in WITHCACHE_DEBUG output can
/// differ).
fn printable(point: u21) bool {
    return switch (point) {
        0x80...0xa0, 0xad, 0x1680, 0x2000...0x200f, 0x2028...0x202f, 0x205f...0x206f => false,
        0x3000, 0xd800...0xf8ff, 0xfeff, 0xfff9...0xfffb, 0xfffe, 0xffff => false,
        0xe0000...0x10ffff => false,
        else => true,
    };
}

/// Length of the valid UTF-8 sequence at s[i], or 0 if none starts there.
pub fn validAt(s: []const u8, i: usize) usize {
    const n = std.unicode.utf8ByteSequenceLength(s[i]) catch return 0;
    if (i + n > s.len) return 0;
    _ = std.unicode.utf8Decode(s[i .. i + n]) catch return 0;
    return n;
}

pub fn isUtf8(s: []const u8) bool {
    return std.unicode.utf8ValidateSlice(s);
}

/// A note line as Python writes it (`encode("utf-8", "replace")`): each
/// undecodable byte becomes '?'.
pub fn writeReplaced(w: *std.Io.Writer, s: []const u8) std.Io.Writer.Error!void {
    var i: usize = 0;
    while (i < s.len) {
        const n = if (s[i] < 0x80) 1 else validAt(s, i);
        if (n == 0) {
            try w.writeByte('?');
            i += 1;
        } else {
            try w.writeAll(s[i .. i + n]);
            i += n;
        }
    }
}

/// Write all of `bytes` to stderr, unbuffered (os.write in the Python shim).
pub fn writeStderr(bytes: []const u8) void {
    var rest = bytes;
    while (rest.len > 0) {
        const n = std.c.write(2, rest.ptr, rest.len);
        if (n <= 0) return;
        rest = rest[@intCast(n)..];
    }
}

/// The UTF-8 character at s[i] (one byte if it isn't valid UTF-8).
pub fn charAt(s: []const u8, i: usize) []const u8 {
    const n = if (s[i] < 0x80) 1 else validAt(s, i);
    return s[i .. i + @max(n, 1)];
}

test "strip and repr follow Python" {
    try std.testing.expectEqualStrings("a b", strip(" \t\u{3000}a b\u{a0}\n"));
    try std.testing.expectEqualStrings("", strip("\u{2003} "));
    var buf: [64]u8 = undefined;
    var w: std.Io.Writer = .fixed(&buf);
    try w.print("{f}", .{Repr{ .s = "it's\x01\xff" }});
    try std.testing.expectEqualStrings("\"it's\\x01\\udcff\"", w.buffered());
}
