#!/usr/bin/env python3
"""free_port.py - print (or return) a free TCP port on 127.0.0.1 for a test
server. The port is drawn below the kernel's ephemeral range: a port that
bind(0) hands out can be taken by any outgoing connection (curl, a client,
one server connecting to another) between our check and the server's bind,
which a loaded parallel `make test` hit."""
import random
import socket


def free_port():
    lo = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    for _ in range(200):
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", random.randint(10000, lo - 1) if lo > 11000 else 0))
            return s.getsockname()[1]
        except OSError:
            pass
        finally:
            s.close()
    raise OSError("no free port")


if __name__ == "__main__":
    print(free_port())
