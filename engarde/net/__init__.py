"""trio shells: sockets, the netlink watcher, the link supervisor, the relay loops."""
