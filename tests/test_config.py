import pytest

from dream3d import config, presets
from dream3d.errors import UserError


def test_precedence_preset_flags_set():
    cfg = presets.resolve("fast", {"prompt": "a red cube", "train.steps": 50}, ["train.steps=7", "train.lr.mlp=0.5"])
    assert cfg.stages[0].train.steps == 7
    assert cfg.stages[0].train.resolution == 48  # from the preset
    assert cfg.stages[0].train.lr["mlp"] == 0.5
    cfg = presets.resolve("fast", {"prompt": "a red cube", "train.steps": 50}, [])
    assert cfg.stages[0].train.steps == 50


def test_set_reads_exponent_numbers_and_naming_the_presets_guidance_keeps_its_options():
    cfg = presets.resolve("fast", {"prompt": "a red cube"}, ["train.lr.sdf=5e-3", "train.lr.mlp=2E-4"])
    assert cfg.stages[0].train.lr["sdf"] == 0.005 and cfg.stages[0].train.lr["mlp"] == 0.0002
    rates = config.stage_learning_rates(cfg.stages[0])
    assert rates["sdf"] == 0.005 and rates["encoding"] == 1e-2  # the rest of the component's table stays
    preset_scale = presets.resolve("gaussian", {"prompt": "x"}, []).guidance.options.guidance_scale
    named = presets.resolve("gaussian", presets.run_flags("x", guidance="sds"), [])
    assert named.guidance.options.guidance_scale == preset_scale != 100.0
    other = presets.resolve("gaussian", presets.run_flags("x", guidance="vsd"), [])
    assert other.guidance.name == "vsd" and other.guidance.options.guidance_scale == 7.5  # VSD's own default


def test_unknown_key_and_wrong_type_name_the_key():
    with pytest.raises(UserError, match="train.stepz"):
        presets.resolve(None, {"prompt": "x"}, ["train.stepz=3"])
    with pytest.raises(UserError, match="train.steps.*integer"):
        presets.resolve(None, {"prompt": "x"}, ["train.steps=abc"])
    with pytest.raises(UserError, match="device.*auto, cpu, cuda"):
        presets.resolve(None, {"prompt": "x"}, ["device=tpu"])
    with pytest.raises(UserError, match="unknown preset 'nope'.*dreamfusion"):
        presets.resolve("nope", {"prompt": "x"}, [])
    with pytest.raises(UserError, match="unknown representation 'voxels'"):
        presets.resolve(None, {"prompt": "x", "representation.name": "voxels"}, [])
    with pytest.raises(UserError, match="key=value"):
        presets.resolve(None, {"prompt": "x"}, ["novalue"])


def test_bad_values():
    with pytest.raises(UserError, match="empty"):
        presets.resolve(None, {"prompt": "   "}, [])
    with pytest.raises(UserError, match="train.steps must be positive"):
        presets.resolve(None, {"prompt": "x", "train.steps": 0}, [])
    with pytest.raises(UserError, match="resolution"):
        presets.resolve(None, {"prompt": "x", "train.resolution": 4}, [])


def test_roundtrip(tmp_path):
    cfg = presets.resolve(None, {"prompt": "a blue sphere", "seed": 3}, ["camera.fov_range=[30, 40]"])
    config.save(cfg, tmp_path / "config.yaml")
    back = config.load(tmp_path / "config.yaml")
    assert back == cfg
    assert back.camera.fov_range == (30.0, 40.0)


def test_stages_inherit_defaults_and_steps_flag_is_the_total():
    data = {"prompt": "a red cube", "train": {"steps": 100, "resolution": 32, "lr": {"mlp": 0.1, "encoding": 0.2}},
            "guidance": {"name": "sds", "guidance_scale": 7.0},
            "stages": [{"name": "coarse", "train": {"steps": 300}},
                       {"name": "fine", "init": "previous", "train": {"resolution": 64}, "guidance": {"t_max": 0.5}}]}
    cfg = config.build(data)
    coarse, fine = cfg.stages
    assert (coarse.train.steps, coarse.train.resolution) == (300, 32)
    assert (fine.train.steps, fine.train.resolution) == (100, 64)
    assert fine.train.lr == {"mlp": 0.1, "encoding": 0.2}
    assert fine.guidance.options.guidance_scale == 7.0 and fine.guidance.options.t_max == 0.5
    assert coarse.guidance.options.t_max != 0.5

    from dream3d.presets import _apply_total_steps
    _apply_total_steps(data, 80)
    assert [s["train"]["steps"] for s in data["stages"]] == [60, 20]  # 300 : 100 kept
    from dream3d.presets import split_steps
    for total, weights in [(6, [400, 150, 150]), (7, [1, 1, 1]), (3, [5, 1, 1]), (1000, [3, 3, 1])]:
        parts = split_steps(total, weights)
        assert sum(parts) == total and min(parts) >= 1


def test_set_indexes_stages_and_bad_chains_are_named():
    cfg = config.build({"prompt": "x", "stages": [{"name": "a"}, {"name": "b", "init": "previous"}]})
    assert [s.name for s in cfg.stages] == ["a", "b"]
    from dream3d.presets import set_dotted
    data = {"stages": [{"name": "a"}, {"name": "b"}]}
    set_dotted(data, "stages.1.train.steps", 5)
    assert data["stages"][1] == {"name": "b", "train": {"steps": 5}}
    with pytest.raises(UserError, match="not an index"):
        set_dotted(data, "stages.7.train.steps", 5)
    with pytest.raises(UserError, match="stage 'a' has init: previous"):
        config.build({"prompt": "x", "stages": [{"name": "a", "init": "previous"}]})
    with pytest.raises(UserError, match="stage names must differ"):
        config.build({"prompt": "x", "stages": [{"name": "a"}, {"name": "a"}]})


def test_every_shipped_preset_resolves_and_chains():
    from dream3d.representations.convert import check_chain

    for name in presets.preset_names():
        cfg = presets.resolve(name, {"prompt": "a red cube"}, [])
        check_chain(cfg)
        assert presets.preset_description(name)
        assert all(s.train.steps > 0 for s in cfg.stages)


def test_components_own_their_learning_rates_and_loss_weights():
    """A stage's rates and weights come from its representation's (and guidance's) config; train.* overrides."""
    cfg = presets.resolve("gaussian", {"prompt": "a red cube"}, ["train.lr.means=2e-3", "train.loss_weights.laplacian=0.5"])
    splats, mesh = cfg.stages
    assert config.stage_learning_rates(splats) == {"means": 2e-3, "scales": 5e-3, "rotations": 1e-3,
                                                   "opacities": 5e-2, "colors": 1e-2}
    assert config.stage_learning_rates(splats)["means"] == 2e-3 and config.stage_learning_rates(mesh)["sdf"] == 1e-3
    assert config.stage_loss_weights(splats) == {"opacity": 1e-3, "laplacian": 0.5}
    assert config.stage_loss_weights(mesh) == {"normal_consistency": 0.1, "laplacian": 0.5}
    vsd = presets.resolve("prolificdreamer", {"prompt": "a red cube"}, [])
    assert all(config.stage_learning_rates(s)["lora"] == 1e-4 for s in vsd.stages if s.guidance.name == "vsd")
    # a stage-level override of the component's own table
    own = presets.resolve("fast", {"prompt": "x"}, ["representation.lr.mlp=7e-4"])
    assert config.stage_learning_rates(own.stages[0])["mlp"] == 7e-4


def test_unknown_learning_rate_or_loss_name_is_refused():
    with pytest.raises(UserError, match="train.lr.bogus: no component has a parameter group 'bogus'"):
        presets.resolve(None, {"prompt": "x"}, ["train.lr.bogus=1"])
    with pytest.raises(UserError, match="train.loss_weights.smooth: no component has a regulariser 'smooth'"):
        presets.resolve(None, {"prompt": "x"}, ["train.loss_weights.smooth=1"])
