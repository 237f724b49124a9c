"""measurement.engine_rows: the published rows' columns checked at load, with the file, row and column named."""
import pytest

from measurement import engine_rows as er

HEAD = "engine,gpu,model,precision,metric,value,source_id,flash_attn\n"


def test_flash_attn_is_on_off_or_empty(tmp_path):
    p = tmp_path / "rows.csv"
    p.write_text(HEAD + "llama.cpp,rtx3090,llama3-8b,gguf-f16,decode_tok_s,50,s,on\n"
                 "llama.cpp,rtx3090,llama3-8b,gguf-f16,decode_tok_s,50,s,\n"
                 "llama.cpp,rtx3090,llama3-8b,gguf-f16,decode_tok_s,50,s,off\n")
    df = er._read(p, "published")
    assert list(df["flash_attn"].fillna("")) == ["on", "", "off"]
    p.write_text(HEAD + "llama.cpp,rtx3090,llama3-8b,gguf-f16,decode_tok_s,50,s,on\n"
                 "llama.cpp,rtx3090,llama3-8b,gguf-f16,decode_tok_s,50,s,yes\n")
    with pytest.raises(er.RowsError, match=r"row 3, column flash_attn: 'yes'"):
        er._read(p, "published")


def test_the_shipped_rows_load():
    df = er.load_engine_rows()
    assert set(df["flash_attn"].dropna()) <= {"on", "off"}
    assert (df["value"] > 0).all()
