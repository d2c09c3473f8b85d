"""Downstream policy-learning benchmark (`wvm policy-bench`, issue #11): do wvm's labels make
better policies from mixed-quality data than plain BC?

    data.py     render the mixed-quality dataset, run `wvm relabel`, load the three label sources
    methods.py  the methods (plain BC, expert-only BC, binary / top-70 % filtered BC, AWR) and their weights
    model.py    the chunk policy and its weighted BC training
    sim.py      rollouts in Meta-World on fixed trials
    stats.py    Wilson and bootstrap intervals
    report.py   report.md, results.json, plots
    bench.py    the whole run, resumable
    cli.py      `wvm policy-bench` arguments
"""
