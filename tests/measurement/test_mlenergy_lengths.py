import pytest

from measurement import mlenergy_lengths as ml


def test_mean_decode_output_is_length_biased():
    # all requests of one length o: the running batch holds them at 0..o, mean o/2
    assert ml.mean_decode_output({"bins": [99, 101], "counts": [7]}) == pytest.approx(50)
    # half at 100, half at 300: time-weighted (100*100 + 300*300) / (2 * 400) = 125, above E[o]/2 = 100
    h = {"bins": [99, 101, 299, 301], "counts": [5, 0, 5]}
    assert ml.mean_decode_output(h) == pytest.approx(125)


def _row(**kw):
    base = {"source_id": ml.SOURCE, "gen_len": "", "location": "configurations entry gpu_model=B200, num_gpus=1, "
            "max_num_seqs=8", "url": "https://github.com/ml-energy/leaderboard/blob/" + "a" * 40
            + "/public/data/models/x__y__lm-arena-chat.json"}
    return {**base, **kw}


def test_fill_sets_lengths_from_the_matching_configuration_only():
    doc = {"configurations": [
        {"gpu_model": "H100", "num_gpus": 1, "max_num_seqs": 8, "avg_output_len": 1.0,
         "output_length_distribution": {"bins": [0, 2], "counts": [1]}},
        {"gpu_model": "B200", "num_gpus": 1, "max_num_seqs": 8, "avg_output_len": 200.4,
         "output_length_distribution": {"bins": [199, 201], "counts": [3]}}]}
    reads = []
    out = ml.fill([_row(), _row(), {"source_id": "other", "gen_len": "5"}], lambda c, p: reads.append(p) or doc)
    assert len(reads) == 1  # one document read once
    assert out[0]["gen_len"] == "200" and out[0]["prompt_len_est"] == str(ml.PROMPT_EST)
    assert out[0]["decode_ctx"] == str(ml.PROMPT_EST + 100)
    assert out[2] == {"source_id": "other", "gen_len": "5", "prompt_len_est": "", "decode_ctx": ""}


def test_fill_names_a_row_it_cannot_place():
    with pytest.raises(ValueError, match="without a leaderboard file"):
        ml.fill([_row(url="nowhere")], lambda c, p: {})
    with pytest.raises(KeyError, match="max_num_seqs=8"):
        ml.fill([_row()], lambda c, p: {"configurations": []})
