"""raydebias.logs: the known-harmless messages are kept off the console, real warnings are not."""

from __future__ import annotations

import importlib.util
import logging
import os
import warnings

import pytest

from raydebias import logs
from raydebias.runtime import worker_env

TIED = ("The tied weights mapping and config for this model specifies to tie shared.weight to lm_head.weight, "
        "but both are present in the checkpoints with different values, so we will NOT tie them. You should "
        "update the config with `tie_word_embeddings=False` to silence this warning.")


class Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def quiet(monkeypatch):
    """Filters installed on the real loggers; removed again afterwards (they are process-global)."""
    monkeypatch.delenv(logs.VERBOSE_ENV, raising=False)
    with warnings.catch_warnings():
        logs.install_filters()
        yield
    for name in {q.logger for q in logs.rules()}:
        logger = logging.getLogger(name)
        for f in [f for f in logger.filters if isinstance(f, logs.QuietFilter)]:
            logger.removeFilter(f)


def emit(name: str, level: int, message: str) -> list[logging.LogRecord]:
    """Log ``message`` on logger ``name`` and return what a handler on that logger received."""
    logger = logging.getLogger(name)
    capture = Capture()
    logger.addHandler(capture)
    old_level, logger.level = logger.level, logging.DEBUG
    try:
        logger.log(level, message)
    finally:
        logger.removeHandler(capture)
        logger.setLevel(old_level)
    return capture.records


def test_tied_t5_head_message_dropped_but_other_transformers_warnings_pass(quiet):
    assert emit("transformers.modeling_utils", logging.WARNING, TIED) == []
    real = ("Some weights of BertForSequenceClassification were not initialized from the model checkpoint "
            "and are newly initialized: ['classifier.weight']")
    assert [r.getMessage() for r in emit("transformers.modeling_utils", logging.WARNING, real)] == [real]
    # The same tie message for a pair other than T5's shared/lm_head is a real config problem: kept.
    other = TIED.replace("shared.weight", "transformer.wte.weight")
    assert len(emit("transformers.modeling_utils", logging.WARNING, other)) == 1


def test_ray_data_chatter_hidden_from_console_but_kept_for_its_log_file(quiet):
    name = "ray.data._internal.execution.streaming_executor"
    (record,) = emit(name, logging.INFO, "Starting execution of Dataset dataset_1. Full logs are in /tmp/x")
    assert record.hide is True  # Ray Data's console handler skips it, its file handler writes it
    (real,) = emit(name, logging.WARNING, "Operator MapBatches(Generate) is running out of memory")
    assert getattr(real, "hide", False) is False


def test_train_report_and_rank_rules(quiet, monkeypatch):
    context = logs._ray_file_logger("train/v2/_internal/execution/context.py")
    assert emit(context, logging.INFO, "Reporting training result 1: TrainingReport(...)") == []
    assert len(emit(context, logging.WARNING, "Training worker 1 failed to report")) == 1
    storage, line = "ray.train.v2._internal.execution.storage", "Checkpoint successfully created at: Checkpoint(x)"
    monkeypatch.setenv("RANK", "1")
    assert emit(storage, logging.INFO, line) == []
    monkeypatch.setenv("RANK", "0")
    assert len(emit(storage, logging.INFO, line)) == 1


def test_harmless_deprecation_ignored_other_deprecations_shown(quiet):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        logs.install_filters()  # simplefilter above reset the filters: install again inside this block
        warnings.warn("`ExecutionOptions.exclude_resources` is deprecated and will be removed", DeprecationWarning, stacklevel=1)
        warnings.warn("`ExecutionOptions.resource_limits` is deprecated", DeprecationWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["`ExecutionOptions.resource_limits` is deprecated"]


def test_verbose_turns_every_rule_off_and_reaches_workers(monkeypatch):
    monkeypatch.delenv(logs.VERBOSE_ENV, raising=False)
    monkeypatch.setattr(logs, "install_filters", lambda: pytest.fail("verbose must not filter"))
    monkeypatch.setattr(logging, "basicConfig", lambda **kw: None)  # leave pytest's root logger alone
    logs.configure_logging(verbose=True)
    assert os.environ[logs.VERBOSE_ENV] == "1"
    assert worker_env()[logs.VERBOSE_ENV] == "1"
    logs.configure_worker_logging()  # reads the env var: installs nothing either


def test_worker_env_turns_hf_bars_off_unless_progress_asked(monkeypatch):
    monkeypatch.delenv("RAYDEBIAS_PROGRESS", raising=False)
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    assert worker_env()["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    monkeypatch.setenv("RAYDEBIAS_PROGRESS", "1")
    assert "HF_HUB_DISABLE_PROGRESS_BARS" not in worker_env()


def test_raylet_pool_warning_regex_is_that_line_only(monkeypatch):
    import re

    monkeypatch.delenv(logs.SKIP_REGEX_ENV, raising=False)
    monkeypatch.setattr(logging, "basicConfig", lambda **kw: None)
    with warnings.catch_warnings():
        logs.configure_logging(verbose=False)
    try:
        skip = re.compile(os.environ[logs.SKIP_REGEX_ENV])
    finally:
        for name in {q.logger for q in logs.rules()}:
            for f in [f for f in logging.getLogger(name).filters if isinstance(f, logs.QuietFilter)]:
                logging.getLogger(name).removeFilter(f)
    assert skip.search("WARNING: 8 PYTHON worker processes have been started on node: f411 with address: 192.0.2.2, "
                       "which is 4x the maximum expected startup concurrency (2). This could be a result of ...")
    assert not skip.search("A worker died or was killed while executing a task by an unexpected system error.")
    assert not skip.search("WARNING: 8 PYTHON worker processes failed to start on node: f411")


def test_every_rule_names_a_logger_that_exists():
    """A rule whose module moved would silently stop working: its logger must be a real module's."""
    for q in logs.rules():
        assert q.why
        if q.logger == "absl":
            continue
        if os.path.isabs(q.logger):
            assert os.path.isfile(q.logger), q.logger
        else:
            assert importlib.util.find_spec(q.logger) is not None, q.logger


def test_ray_workers_get_the_filters_and_a_working_state_api(ray_local):
    """init_ray's cluster: every worker ran the setup hook, and the State API query that Ray Train's
    PlacementGroupCleaner makes every second answers (it failed, and warned, on every try before)."""
    ray = ray_local

    @ray.remote(num_cpus=0)
    class Alive:
        def ping(self):
            return True

    @ray.remote(num_cpus=0)
    def probe(actor_id: str):
        from ray.train.v2._internal.state.util import is_actor_alive  # the cleaner's own query

        from raydebias.logs import QuietFilter

        filtered = any(isinstance(f, QuietFilter) for f in logging.getLogger("transformers.modeling_utils").filters)
        return filtered, bool(is_actor_alive(actor_id, timeout=20))

    actor = Alive.remote()
    assert ray.get(actor.ping.remote())
    assert ray.get(probe.remote(actor._actor_id.hex()), timeout=120) == (True, True)
