"""trio shells: sockets, the netlink watcher, the link supervisor, the pump and its handlers."""
