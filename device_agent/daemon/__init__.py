"""The THOMAS daemon for unrooted phones (issue 6): `python -m device_agent serve` inside
Termux. Standard library only. By what each part is:

    serve.py     the entry points: `serve` (listen until stopped) and `pair` (codes, paired computers)
    base.py      what every part shares: the log, Refused, the JSON state files
    pairing.py   pairing codes, paired hosts, authentication (hosts.json, pairing.json)
    jobs.py      agent calls as jobs: the FIFO lane, output lines, cancel, recovery after a crash
    state.py     Daemon: what every connection shares (root and its path rule, pairing, jobs, uploads)
    handlers.py  the ops a paired host may call (status, files, uploads, install, jobs)
    wire.py      one connection (welcome, auth or pair, requests, job streams) and the Server

It listens on 127.0.0.1 only (the laptop comes in through `adb forward`) and speaks the daemon wire
of protocol.py, which is the contract: frames, welcome, auth/pair, ops, job streams. One thread per
connection; nothing but auth or pair runs before a host has proved it holds a pairing token.
Human lines go to stderr. State lives under <root>/.daemon/, which the wire never reaches:

    hosts.json      {"hosts": [{"id": 8 hex, "name", "token": 64 hex, "paired_at": unix}]}      0600
    pairing.json    {"sha256": of the open code, "expires": unix, "attempts": tries left}       0600
    partial/KEY     an upload in progress, KEY = sha256("path\\0size\\0sha256") (so a drop resumes)
    jobs/ID.json    a job record (the `jobs` fields + "pid");  jobs/ID.out: its output lines
    daemon.json     {"pid", "port", "started", "root"} of the running daemon
"""
