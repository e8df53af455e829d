//! The shape of what the shim knows about one tool, mirroring
//! src/withcache/shim/tool.py field for field. The values are generated from
//! the Python tables at build time (build.py writes `tables.zig`), so the two
//! shims can't disagree on an option; a field added in Python and not here
//! fails the build.

pub const Style = enum { curl, getopt };

/// What an option takes (scan.py: ARG, FLAG, BOOL, OPTIONAL).
pub const Kind = enum { arg, flag, bool, optional };

pub const Option = struct { name: []const u8, kind: Kind };
pub const Short = struct { key: []const u8, value: []const u8 };

pub const Table = struct {
    style: Style,
    long: []const Option, // in the Python table's order
    short: []const Short,

    /// The option's kind, or null if the table doesn't list it.
    pub fn kind(table: *const Table, name: []const u8) ?Kind {
        for (table.long) |option| {
            if (eql(option.name, name)) return option.kind;
        }
        return null;
    }
};

pub const Text = struct { key: []const u8, value: []const u8 };
pub const Flag = struct { key: []const u8, value: bool };
pub const Number = struct { key: []const u8, value: u8 };
pub const Names = struct { key: []const u8, value: []const []const u8 };

pub const Tool = struct {
    name: []const u8,
    table: Table,
    server_env: []const u8,
    real_env: []const u8,
    url_options: []const []const u8,
    pass_through: []const Text,
    https_pass_through: []const Text,
    protocol_options: []const Text,
    url_protocol_options: []const []const u8,
    method_options: []const []const u8,
    next_option: ?[]const u8,
    globoff_option: ?[]const u8,
    header_options: []const []const u8,
    user_password_options: []const []const u8,
    user_options: []const []const u8,
    password_options: []const []const u8,
    preemptive: []const Flag,
    preemptive_default: bool,
    family_options: []const Number,
    ca_file_options: []const []const u8,
    ca_dir_options: []const []const u8,
    no_verify: []const Flag,
    ca_env: []const []const []const u8,
    proxy_options: []const Flag,
    proxy_switch: ?[]const u8,
    no_proxy_option: ?[]const u8,
    proxy_env: []const Names,
    no_proxy_env: []const []const u8,
    execute_option: ?[]const u8,
    execute_aliases: []const Text,
    execute_ignored: []const []const u8,
    fallback_statuses: []const u8,
    fail_option: ?[]const u8,
    unsupervised: []const Text,
    file_fallback_statuses: []const u8,
    output_options: []const []const u8,
    remote_name_options: []const []const u8,
    keep_options: []const []const u8,
};

pub fn eql(a: []const u8, b: []const u8) bool {
    return a.len == b.len and @import("std").mem.eql(u8, a, b);
}

pub fn contains(names: []const []const u8, name: []const u8) bool {
    for (names) |n| {
        if (eql(n, name)) return true;
    }
    return false;
}

/// The value stored under `key` in a list of key/value pairs, if any.
pub fn lookup(comptime T: type, pairs: []const T, key: []const u8) ?@FieldType(T, "value") {
    for (pairs) |pair| {
        if (eql(pair.key, key)) return pair.value;
    }
    return null;
}

pub fn optEql(a: ?[]const u8, b: []const u8) bool {
    return if (a) |value| eql(value, b) else false;
}
