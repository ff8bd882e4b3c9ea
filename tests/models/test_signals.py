from models.signals import SIGNAL_SPECS, added_tokens, find_signal_run

IMG = [100, 101, 102, 103]


def test_added_tokens_release_order():
    tokens = added_tokens()
    assert tokens[:3] == ["<Img>", "</Img>", "[IMG0]"]
    assert tokens[6] == "[VID0]" and tokens[29] == "[VID23]" and tokens[30] == "[AUD0]"
    assert len(tokens) == 38  # ids 32000..32037 on LLaMA's vocabulary
    assert [s.num_tokens for s in SIGNAL_SPECS.values()] == [4, 24, 8]


def test_run_found_at_its_own_index():
    run = find_signal_run([5, 6, 100, 101, 102, 103, 7], IMG, "image")
    assert run.ok and run.start == 2  # no BOS offset: index into the generated ids themselves


def test_run_at_the_very_start_and_end():
    assert find_signal_run(IMG, IMG, "image").start == 0
    assert find_signal_run([1, 2] + IMG, IMG, "image").start == 2


def test_absent_run_is_none():
    assert find_signal_run([1, 2, 3], IMG, "image") is None


def test_out_of_order_run_is_malformed_not_a_crash():
    run = find_signal_run([100, 102, 101, 103], IMG, "image")
    assert not run.ok and "malformed" in run.reason


def test_truncated_run_is_malformed():
    run = find_signal_run([9, 100, 101], IMG, "image")
    assert not run.ok and "2" in run.reason


def test_run_without_first_token_is_malformed():
    run = find_signal_run([9, 101, 102, 103], IMG, "image")
    assert not run.ok and "first" in run.reason


def test_interrupted_run_is_malformed():
    assert not find_signal_run([100, 101, 5, 102, 103], IMG, "image").ok
