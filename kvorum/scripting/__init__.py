"""Lua scripting: a sandboxed Lua runtime and reply conversion, below the command layer.

The command layer (`kvorum.commands.scripting`) says what redis.call does; this
package knows Lua, not commands, keyspaces or sockets.
"""
