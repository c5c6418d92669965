"""Blinker signals, in flask-jobtastic's own namespace.

Connect with ``flask_jobtastic.signals.job_sent.connect(receiver)``. The
sender is the task instance; keyword arguments are listed per signal.
"""

from __future__ import annotations

from blinker import Namespace

_signals = Namespace()

#: A new job went to the broker. Arguments: ``task_id``.
job_sent = _signals.signal("job-sent")

#: A call was answered from the result cache, no message sent. Arguments: ``task_id``.
cache_hit = _signals.signal("cache-hit")

#: A call joined an identical job already in flight. Arguments: ``task_id``.
herd_joined = _signals.signal("herd-joined")

#: A job could not be queued: the broker, or the result backend it is recorded
#: in, did not answer. Arguments: ``task_id``, ``error``.
broker_unavailable = _signals.signal("broker-unavailable")

#: A tracked job's registry record changed state. Sender: the registry.
#: Arguments: ``record`` (the new ``JobRecord``), ``previous_state`` (or None when new).
task_changed = _signals.signal("task-changed")
