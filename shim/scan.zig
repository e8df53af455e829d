//! Read a curl or wget command line the way the tool reads it (a port of
//! scan.py): options with their arguments, and operands. curl takes long
//! names by unique prefix, `--no-` for booleans and no `--name=value`; wget
//! follows GNU getopt_long (unique prefixes, `=value`, optional arguments
//! only after `=`, permutation unless POSIXLY_CORRECT). Anything the tool
//! would reject or the table doesn't know is reported, never guessed.

const std = @import("std");
const tool = @import("tool.zig");
const text = @import("text.zig");

pub const Token = struct {
    index: usize, // argv index where it starts
    name: []const u8, // canonical long option name; "" for an operand
    value: ?[]const u8, // the option's argument, or the operand itself
    value_index: ?usize, // argv index that is exactly `value` (null if it shares a word)
    negated: bool = false, // given as --no-<name>
};

pub const Error = error{ Unreadable, OutOfMemory };

/// Why a command line is unreadable, worded as scan.py words it.
pub const Why = struct {
    gpa: std.mem.Allocator,
    message: []const u8 = "",

    pub fn fail(why: *Why, comptime fmt: []const u8, args: anytype) Error {
        why.message = try std.fmt.allocPrint(why.gpa, fmt, args);
        return error.Unreadable;
    }
};

pub fn scan(table: *const tool.Table, argv: []const []const u8, posixly_correct: bool, why: *Why) Error![]Token {
    var tokens: std.ArrayList(Token) = .empty;
    var i: usize = 0;
    var options_end = false;
    while (i < argv.len) {
        const word = argv[i];
        if (options_end or !text.startsWith(word, "-") or (std.mem.eql(u8, word, "-") and table.style == .getopt)) {
            try tokens.append(why.gpa, .{ .index = i, .name = "", .value = word, .value_index = i });
            if (posixly_correct and table.style == .getopt) options_end = true;
            i += 1;
        } else if (std.mem.eql(u8, word, "--")) {
            options_end = true;
            i += 1;
        } else if (text.startsWith(word, "--")) {
            i = try long(table, argv, i, &tokens, why);
        } else {
            i = try short(table, argv, i, &tokens, why);
        }
    }
    return tokens.items;
}

fn long(table: *const tool.Table, argv: []const []const u8, i: usize, tokens: *std.ArrayList(Token), why: *Why) Error!usize {
    var word = argv[i][2..];
    var value: ?[]const u8 = null;
    if (table.style == .getopt) {
        if (std.mem.indexOfScalar(u8, word, '=')) |eq| {
            value = word[eq + 1 ..];
            word = word[0..eq];
        }
    }
    var negated = false;
    if (table.style == .curl and text.startsWith(word, "no-")) {
        word = word[3..];
        negated = true;
    }
    var name = try match(table, word, why);
    const kind = table.kind(name).?;
    if (table.style == .curl and negated and kind != .bool) {
        return why.fail("--no-{s} is not a boolean option", .{word});
    }
    if (table.style == .getopt and text.startsWith(name, "no-") and table.kind(name[3..]) == .optional) {
        name = name[3..]; // getopt lists the generated --no-<bool> forms
        negated = true;
    }
    if (kind == .arg) {
        if (value) |v| {
            try tokens.append(why.gpa, .{ .index = i, .name = name, .value = v, .value_index = null });
            return i + 1;
        }
        if (i + 1 >= argv.len) return why.fail("--{s} needs an argument", .{name});
        try tokens.append(why.gpa, .{ .index = i, .name = name, .value = argv[i + 1], .value_index = i + 1 });
        return i + 2;
    }
    if (value != null and kind != .optional) return why.fail("--{s} takes no argument", .{name});
    try tokens.append(why.gpa, .{ .index = i, .name = name, .value = value, .value_index = null, .negated = negated });
    return i + 1;
}

/// The long name `word` stands for: itself, or the one name it begins.
fn match(table: *const tool.Table, word: []const u8, why: *Why) Error![]const u8 {
    for (table.long) |option| {
        if (tool.eql(option.name, word)) return option.name;
    }
    var found: ?[]const u8 = null;
    var count: usize = 0;
    if (word.len > 0) {
        for (table.long) |option| {
            if (text.startsWith(option.name, word)) {
                found = option.name;
                count += 1;
            }
        }
    }
    if (count != 1) {
        return why.fail("--{s} is {s}", .{ word, if (count > 0) "ambiguous" else "not a known option" });
    }
    return found.?;
}

fn short(table: *const tool.Table, argv: []const []const u8, i: usize, tokens: *std.ArrayList(Token), why: *Why) Error!usize {
    const word = argv[i];
    var pos: usize = 1;
    while (pos < word.len) : (pos += 1) {
        const name = tool.lookup(tool.Short, table.short, word[pos .. pos + 1]) orelse
            return why.fail("-{s} is not a known option", .{text.charAt(word, pos)});
        if (table.kind(name).? != .arg) {
            try tokens.append(why.gpa, .{ .index = i, .name = name, .value = null, .value_index = null });
            continue;
        }
        const rest = word[pos + 1 ..];
        if (rest.len > 0) {
            try tokens.append(why.gpa, .{ .index = i, .name = name, .value = rest, .value_index = null });
            return i + 1;
        }
        if (i + 1 >= argv.len) return why.fail("-{s} needs an argument", .{word[pos .. pos + 1]});
        try tokens.append(why.gpa, .{ .index = i, .name = name, .value = argv[i + 1], .value_index = i + 1 });
        return i + 2;
    }
    if (word.len == 1) return why.fail("a lone '-' is not an option curl knows", .{});
    return i + 1;
}
