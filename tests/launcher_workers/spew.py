"""Writes SIZE bytes of numbered lines to stdout and stderr in randomly split writes, so lines
arrive in pieces; the test checks every line comes out whole and in order."""

import os
import random
import sys

size = int(sys.argv[1])
rank = int(os.environ["RANK"])
rng = random.Random(rank)
payload = "x" * 80
buf = {1: bytearray(), 2: bytearray()}
written = 0
i = 0
while written < size:
    fd = 1 if i % 3 else 2
    line = f"{'out' if fd == 1 else 'err'} r{rank} n{i} {payload[: i % 80]}|\n".encode()
    buf[fd] += line
    written += len(line)
    i += 1
    if len(buf[fd]) > 4096:
        data = bytes(buf[fd])
        buf[fd].clear()
        while data:  # split at random points, including mid-line
            k = rng.randint(1, min(len(data), 3000))
            os.write(fd, data[:k])
            data = data[k:]
for fd in (1, 2):
    if buf[fd]:
        os.write(fd, bytes(buf[fd]))
os.write(1, f"out r{rank} total {i} no newline at the end".encode())
