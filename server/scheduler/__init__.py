"""The only place that groups requests into batches.

One scheduler per loaded model. Handlers on the event loop submit *items* (Whisper
windows, TTS sentences) and await one future per item; one asyncio task owns the
queue and one worker thread drives the model. Two kinds, one queue:

- :class:`BatchScheduler` hands the model a whole batch of compatible items and
  waits until all of it is done (CTranslate2, the ONNX voices, the torch
  engine's whole-batch mode);
- :class:`StepScheduler` keeps a step engine's rows full: items join a running
  batch at the next step and leave it as soon as they finish (continuous
  batching, the torch engine).

Guarantees, each of them tested, for both:

- a batch never holds more than ``max_batch_size`` items (a step engine's rows),
  and only items whose ``batch_key`` is equal (items that cannot share one model
  call never meet);
- items leave in arrival order within a key, and the oldest item always leads the
  next batch, so nothing starves;
- the model is entered by one thread only, the one that loaded it;
- one bad item fails alone (a failing batch is retried item by item; a step
  engine fails only the row whose item failed);
- an item whose future was cancelled (its client went away) is never computed,
  or, already running in a row, stops at the next step and frees its row;
- an item that waited longer than ``max_queue_time`` seconds without being taken
  into a batch leaves the queue uncomputed, and its future fails with
  :class:`~server.errors.NotReady` (code ``queue_timeout``, with a ``Retry-After``
  estimate), even while the worker is busy with a long batch; items already taken
  into a batch are not affected. The timeout bounds how long a *request* waits for
  service: once one item of a request (its :class:`Ticket`) has been taken into a
  batch, its other items no longer expire, so a long file whose windows queue
  behind each other, or a long text spoken sentence by sentence, is not cut off
  half-way for being long;
- at most ``max_queue_size`` requests are admitted at once; the next one is refused
  with :class:`~server.errors.Overloaded` and a ``Retry-After`` estimate, before any
  of its work (decoding included) is done.

Every refusal is reported to the observer's ``rejected`` with a reason:
``queue_full`` (admission refused), ``queue_timeout`` (an item expired, once per
item) or ``not_ready`` (the scheduler is not running).

Layout: :mod:`.queue` (the queue, admission, timers; the base class),
:mod:`.batches` (whole batches), :mod:`.rows` (continuous batching).
"""

from server.scheduler.batches import BatchScheduler
from server.scheduler.queue import BatchObserver, ModelScheduler, Ticket
from server.scheduler.rows import StepScheduler

__all__ = ["BatchObserver", "BatchScheduler", "ModelScheduler", "StepScheduler", "Ticket"]
