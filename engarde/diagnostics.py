"""Process health figures for the dashboard and the leak tests: trio tasks, open fds, memory."""

from __future__ import annotations

import os

import trio


def task_count() -> int:
    """Tasks alive in the current trio run (the root task included)."""
    count = 0
    stack = [trio.lowlevel.current_root_task()]
    while stack:
        task = stack.pop()
        if task is None:
            continue
        count += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return count


def open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # minus the listing's own fd
    except OSError:
        return -1


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return -1


def process_stats() -> dict[str, int]:
    """Call from the trio thread."""
    return {"tasks": task_count(), "openFds": open_fds(), "rssBytes": rss_bytes()}
