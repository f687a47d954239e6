"""Dashboards and Prometheus rules for assistants-exporter, generated from plain Python dicts.

`python -m mixin` regenerates both `dashboards/*.json` and `rules/assistants-exporter.rules.yml`;
thresholds live in `mixin/config.py` so the alerts and the dashboards' colours cannot drift apart.
"""
