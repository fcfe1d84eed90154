#!/usr/bin/env python3
"""Where a first backup's CPU time goes: a perf profile of the controller and the agent
folded into stages.

    perf record -e cpu-clock -F 499 -g -p CONTROLLER_PID,AGENT_PID -o backup.data  (during a backup)
    perf script -F comm,pid,tid,ip,sym,dso -i backup.data | python3 bench/profile_summary.py

Each sample is put in the first stage whose pattern matches its leaf symbol or, for kernel
samples, a function on its stack (the system call it serves). Prints a Markdown table.
"""
import collections
import re
import sys

# (stage, process or None for both, pattern on the leaf symbol, pattern on the stack)
STAGES = [
    ("chunking (FastCDC)", "lifeboat-agent", r"cut_gear|chunker", None),
    ("hashing (keyed BLAKE3)", "lifeboat-agent", r"blake3", None),
    ("compression (zstd)", "lifeboat-agent", r"ZSTD_|HUF_|FSE_|HIST_", None),
    ("verification: hashing", "lifeboat-controller", r"blake3", None),
    ("verification: decompression", "lifeboat-controller", r"ZSTD_|HUF_|FSE_", None),
    ("TLS (AES-GCM, rustls)", None, r"aes_gcm|aws_lc|gcm|rustls|ghash", None),
    ("fsync", None, None, r"sync_file_range|ext4_sync_file|vfs_fsync|file_write_and_wait|fdatasync"),
    ("store writes (page cache)", "lifeboat-controller", None, r"ksys_write|vfs_write|ksys_pwrite|__x64_sys_pwrite"),
    ("source reads (page cache)", "lifeboat-agent", None, r"ksys_read|vfs_read|filemap_read|__x64_sys_pread"),
    ("catalog (SQLite)", "lifeboat-controller", r"sqlite3|pcache1|btree|Btree|vdbe|Vdbe", None),
    ("sockets (kernel TCP)", None, r"softirq|__libc_recv|__libc_send", r"tcp_|sock_|__sys_sendto|__sys_recvfrom|sock_read_iter|sock_write_iter"),
    ("gRPC, protobuf, copies", None, r"memmove|memcpy|prost|tonic|h2::|hyper|bytes::", None),
    ("memory (allocation, page faults)", None, r"malloc|_int_free|cfree|_int_malloc|unlink_chunk|memset|clear_page|do_anonymous_page|page_fault|handle_mm_fault|memcg|pte_|unmap_page|mas_walk|kmem_cache", None),
    ("scheduling, wakeups", None, r"schedule|finish_task_switch|futex|spin_unlock|tokio::|epoll|_raw_spin", r"futex|epoll_wait|schedule"),
]


def stage_of(comm, leaf, stack):
    for name, proc, leaf_re, stack_re in STAGES:
        if proc and proc != comm:
            continue
        if leaf_re and re.search(leaf_re, leaf):
            return name
        if stack_re and any(re.search(stack_re, f) for f in stack):
            return name
    return "other"


def main():
    samples = []  # (pid, stack)
    binary = {}  # pid -> process name, learnt from any sample whose stack reaches the binary
    pid = None
    stack = []
    for line in list(sys.stdin) + [""]:
        if not line.strip():
            if stack and pid:
                samples.append((pid, stack))
            stack = []
            continue
        if not line.startswith((" ", "\t")):
            m = re.search(r"\s(\d+)(?:/\d+)?(\s|$)", line)
            pid = m.group(1) if m else None
            continue
        parts = line.strip().split(None, 1)
        if len(parts) < 2:
            continue
        sym, _, dso = parts[1].rpartition(" (")
        stack.append(re.sub(r"\+0x[0-9a-f]+$", "", sym))
        for name in ("lifeboat-agent", "lifeboat-controller"):
            if name in dso:
                binary[pid] = name
    counts = collections.Counter()
    by_proc = collections.Counter()
    for pid, stack in samples:
        proc = binary.get(pid, "other")
        counts[stage_of(proc, stack[0], stack)] += 1
        by_proc[proc] += 1
    total = sum(counts.values())
    print("| stage | share of CPU |")
    print("|---|---|")
    for name, n in counts.most_common():
        print(f"| {name} | {100 * n / total:.1f}% |")
    print()
    print("Samples: " + ", ".join(f"{p} {100 * n / total:.0f}%" for p, n in by_proc.most_common()))


if __name__ == "__main__":
    main()
