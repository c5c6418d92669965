"""Benchmarks of flask-jobtastic against what a user would write instead.

Run them all with ``python -m benchmarks`` (``make bench``); ``--quick`` runs a
short smoke version of each, ``--only P1,P4`` a selection. Every run starts its
own throwaway Redis, memcached, Celery worker and gunicorn, prints a table of
medians and ratios and writes it as markdown.
"""
