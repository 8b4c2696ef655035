# Copyright (c) the dermseg contributors. Apache-2.0.
"""The always-on edge service: Orthanc is the DICOM front door, the app runs on every stable study, the results
go to the PACS.  ``python -m monai_app.serve --orthanc URL --work DIR`` (see ``__main__``).

Orthanc receives what the PACS's "send to AI" rule or a dermoscope pushes (C-STORE or STOW-RS) and reports each
study in its changes feed (``GET /changes``) once no instance has arrived for ``StableAge`` seconds.  The service
follows that feed over REST, downloads each stable study's photographs into ``WORK/studies/<id>/round-<n>/in``,
runs the MAP's own pipeline on them (``python -m monai_app``, a child process: :mod:`.study` says why), and sends
the outputs with :func:`monai_app.pacs.send_outputs`.  No DICOM listener of our own, no second pipeline.

Modules::

    orthanc    the REST calls, and which errors are outages (waited out) and which are answers
    progress   the SQLite progress database: feed position, rounds, instances taken
    study      one round: what to segment, download, the app run, its case counts
    service    the loop: changes in, one due round at a time, backoff for Orthanc and the PACS
    ops        /healthz and /metrics (prometheus-client)

Durability: every study is processed exactly once, through any ``kill -9``
------------------------------------------------------------------------------
``WORK/serve.sqlite`` (WAL, synchronous=FULL) is committed at four points, each one transaction:

1. **Taking in a page of changes**: the rounds it queues and the new feed position together.  Killed before the
   commit, the page is read again; taking an event in twice changes nothing (a study has one pending round).
2. **Starting an app run**: the round's attempt count goes up *before* the app starts, so a study that brings the
   service down every time still runs out of attempts (``--max-attempts``, default 3) instead of looping.  A run
   killed with the service leaves the round ``queued``; the next start runs it again from scratch.  Nothing of a
   ``queued`` round has been sent, so its output folder is simply remade (the app's output UIDs are deterministic:
   the same objects again), and the edge store keeps the first record of a source UID.
3. **App run complete** (``queued -> sending``): recorded only after the app exited 0, with its complete
   results.json on disk (the app writes it atomically) and the instances the round took.  From here the round is
   never run again, only sent.  The service, not the app, sends (the child runs with ``DERMSEG_SEND_TO`` empty):
   had the app sent inside its run, a kill between its send and this commit would run the app again and rewrite
   results.json without the record of what was already sent.
4. **Sent** (``sending -> done``): after ``send_outputs`` reports every object on every target.  The record of what
   was sent is results.json's ``transfers`` list, which ``send_outputs`` saves (under a lock, atomically) after
   each target; a round killed while sending is sent again from that record, so an object recorded as sent to a
   target is never sent to it again.  The window that remains is the one target being sent to when the kill came:
   objects it received before the kill were not yet recorded and go again; the PACS receives the same SOP
   Instance UIDs and keeps one copy of each (Orthanc answers "already stored"), so the PACS still holds each result
   exactly once.

Failures: an app run that fails is recorded with its error and tried again after ``--retry-delay`` (doubling),
at most ``--max-attempts`` times, then the round is ``failed``.  Orthanc unreachable and the PACS unreachable or
refusing are outages, not study failures: each is waited out with capped exponential backoff (``--backoff-max``),
logged once per try, and a round whose results cannot be sent stays ``sending`` (nothing is dropped; the queue
depth and ``dermseg_sends_failed_total`` show it).  A study Orthanc reports stable again (new instances, or our
own results coming back) gets a new round that takes only the instances no earlier round took; our own results
(Manufacturer ``dermseg``) and non-photographs make a round ``skipped`` without an app run.

The log holds Orthanc ids (hashes of the UIDs), counts, states and errors at the default level, no patient names
or IDs; the work folder holds patient data (the downloaded photos, until sent, and the results).
"""

__all__ = ["main"]


def main(argv=None) -> int:
    from .__main__ import main as run

    return run(argv)
