"""The thread governor (_governor.pyx) and the thread choices the forward pass makes with it:
the early abandon of a losing try, attention's "small work" check, and Session.n_threads as
the one owner of the thread count. Decisions are fed made-up figures through the twins in
_twins.pyx; a real session checks that a new thread count reaches the engine."""
import pytest

import guanaco_rt
from guanaco_rt._kernels import _twins as twins
from guanaco_rt.errors import InvalidRequestError, ModelClosedError

from helpers import tiny_model

N_LAYER = 10


# ---- a try of the other setting, given up once behind the current one's pace ----------
def test_a_try_of_one_thread_behind_the_teams_pace_is_given_up_after_a_layer():
    # two threads win at 11 ms a token (1.1 ms a layer); the try of one thread takes 2 ms a layer
    start, after, dt, one = twins.gov_try_twin(2, False, 0.020, 0.011, N_LAYER,
                                               [0.002 * (i + 1) for i in range(N_LAYER)])
    assert start == 1                            # the token tries one thread...
    assert after == [2] * N_LAYER                # ...and goes back to the team after its first layer
    assert dt == pytest.approx(0.002 * N_LAYER)  # its time, extrapolated from that layer to a token
    assert one is False                          # the team stays the setting


def test_a_try_of_the_team_behind_one_threads_pace_is_given_up_too():
    # a core busy elsewhere: one thread at 20 ms a token wins; the team's try takes 6 ms a layer
    start, after, dt, one = twins.gov_try_twin(2, True, 0.020, 0.060, N_LAYER, [0.006, 0.012])
    assert start == 2 and after == [1, 1]
    assert dt == pytest.approx(0.060)
    assert one is True


def test_a_try_that_keeps_the_pace_runs_to_its_end_and_can_win():
    # one thread is the setting (20 ms a token, 2 ms a layer); the team now does 1 ms a layer
    start, after, dt, one = twins.gov_try_twin(2, True, 0.020, 0.060, N_LAYER,
                                               [0.001 * (i + 1) for i in range(N_LAYER)])
    assert start == 2 and after == [2] * N_LAYER
    assert dt == pytest.approx(0.010)            # its whole measured time
    assert one is False                          # 10 ms < 0.9 x 20 ms: the team takes over


def test_a_try_is_judged_layer_by_layer_against_the_pace_so_far():
    # on pace (1.1 ms a layer) for 3 layers, then behind at the 4th
    times = [0.0010, 0.0021, 0.0032, 0.0050]
    start, after, dt, one = twins.gov_try_twin(2, False, 0.020, 0.011, N_LAYER, times)
    assert start == 1 and after == [1, 1, 1, 2]
    assert dt == pytest.approx(0.0050 * N_LAYER / 4)
    assert one is False


def test_a_lost_try_stays_lost_for_the_rest_of_its_token():
    # behind after layer 1; later layers on the team are fast, but the decision is not revisited
    start, after, dt, _ = twins.gov_try_twin(2, False, 0.020, 0.011, N_LAYER, [0.005, 0.0051, 0.0052])
    assert after == [2, 2, 2] and dt == pytest.approx(0.05)


def test_the_try_twin_checks_its_figures():
    with pytest.raises(InvalidRequestError, match="n_threads"):
        twins.gov_try_twin(1, False, 0.02, 0.01, N_LAYER, [0.001])
    with pytest.raises(InvalidRequestError, match="paces"):
        twins.gov_try_twin(2, False, 0.0, 0.01, N_LAYER, [0.001])


# ---- attention's "small work" check -----------------------------------------------------
def test_attention_on_a_7b_shape_at_8192_positions_runs_on_the_team():
    # 32 heads of 128, a batch of 64 queries ending at position 8192: 2^31 multiply-adds,
    # which a product of ints wrapped to a negative number, "small", so one thread
    assert twins.attention_threads_twin(2, 32, 128, 8192 - 64, 64) == 2
    assert twins.attention_threads_twin(8, 32, 128, 16384 - 64, 64) == 8
    assert twins.attention_threads_twin(4, 32, 128, 32768 - 512, 512) == 4
    assert twins.attention_threads_twin(2, 32, 128, 8191, 1) == 2          # one decoded token, long context


def test_small_attention_stays_on_one_thread():
    assert twins.attention_threads_twin(2, 4, 64, 0, 1) == 1                # 256 multiply-adds
    assert twins.attention_threads_twin(2, 32, 128, 14, 1) == 1              # 4096 x 15 < 2^16
    assert twins.attention_threads_twin(2, 32, 128, 15, 1) == 2              # 4096 x 16 = 2^16
    assert twins.attention_threads_twin(1, 32, 128, 8192 - 64, 64) == 1     # one thread asked


# ---- Session.n_threads: one owner ----------------------------------------------------
@pytest.fixture(scope="module")
def model(tmp_path_factory):
    with guanaco_rt.Model(tiny_model(tmp_path_factory.mktemp("gov"), "q4_0", n_vocab=300), n_threads=2) as m:
        yield m


def decode(s, n):
    for t in range(n):
        s.eval([20 + t])


def test_setting_n_threads_changes_what_the_engine_runs(model):
    s = guanaco_rt.Session(model, n_ctx=64, n_threads=2)
    s.eval([1, 5, 6, 7])
    s.n_threads = 1
    assert s.n_threads == 1
    assert s._state.n_threads == 1 and s.thread_stats()["n_threads"] == 1    # the State and its governor
    decode(s, 8)
    # on 2 threads the governor decodes the first token (or its recheck, 4 tokens in) on the team
    assert s.thread_stats()["multi_thread_tokens"] == 0
    s.n_threads = 2
    assert s._state.n_threads == 2 and s.thread_stats()["n_threads"] == 2
    decode(s, 8)
    assert s.thread_stats()["multi_thread_tokens"] >= 1


def test_a_new_thread_count_keeps_the_bits(model):
    ids = [1, 5, 6, 7, 8, 9, 10, 11]
    a = guanaco_rt.Session(model, n_ctx=64, n_threads=2)
    b = guanaco_rt.Session(model, n_ctx=64, n_threads=2)
    b.n_threads = 1
    assert a.eval(ids).tobytes() == b.eval(ids).tobytes()


def test_n_threads_is_checked_and_needs_an_open_session(model):
    s = guanaco_rt.Session(model, n_ctx=64, n_threads=2)
    with pytest.raises(ValueError, match="n_threads"):
        s.n_threads = 0
    assert s.n_threads == 2
    s.close()
    with pytest.raises(ModelClosedError):
        s.n_threads = 1
