"""``dcsched sim``: replay a cluster trace through the core's own admission passes.

``trace`` reads Philly, Alibaba 2023 and dcsched CSV traces; ``engine`` replays them on a
virtual clock with a simulated executor, calling ``dcsched.core.admission.plan`` exactly
as the live service does; ``report`` writes jobs.csv, summary.json and utilization.csv;
``compare`` puts several runs side by side; ``cli`` is the click command. See docs/sim.md.
"""
