"""bench/embedding_hardness.py's measures, on point sets whose answer is known."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[1] / "bench" / "embedding_hardness.py"
_spec = importlib.util.spec_from_file_location("embedding_hardness", _PATH)
hardness_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hardness_module)


def test_lid_follows_the_dimension_the_points_really_fill():
    rng = np.random.default_rng(0)
    n = 3000
    # a curve: a circle (1-d) placed in 384 dimensions
    angle = rng.uniform(0, 2 * np.pi, n)
    basis = np.linalg.qr(rng.standard_normal((384, 2)))[0]
    curve = np.c_[np.cos(angle), np.sin(angle)] @ basis.T
    # a Gaussian cloud filling 32 of the 384 dimensions (MLE reads ~23: it underestimates)
    cloud = np.zeros((n, 384))
    cloud[:, :32] = rng.standard_normal((n, 32))
    cloud[:, 32] = 20.0  # keep it off the origin so unit-normalising keeps 32 dims
    curve_lid = hardness_module.hardness(curve)["lid"]
    cloud = hardness_module.hardness(cloud)
    assert curve_lid < 2.5
    assert 15 < cloud["lid"] < 45  # and far above the curve
    assert cloud["contrast"] > 1.0 and cloud["nn1"] >= cloud["nn10"] >= cloud["nn100"]


def test_movie_texts_reads_title_genres_and_plot(tmp_path):
    path = tmp_path / "movies.dat"
    path.write_text(
        "1::Toy Story::1995::G::22 Nov 1995::Animation, Comedy::John::x::Tom"
        "::A cowboy doll.\r\n2::short\r\n",
        encoding="utf-8",
    )
    assert hardness_module.movie_texts(path) == ["Toy Story. Animation, Comedy. A cowboy doll."]
    (tmp_path / "empty.dat").write_text("")
    with pytest.raises(SystemExit, match="no movies read"):
        hardness_module.movie_texts(tmp_path / "empty.dat")
