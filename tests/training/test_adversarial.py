"""The adversarial phase as a component: when it acts, the generator term it adds (adaptive weight
× generator_factor × g_loss), the discriminator update on detached reconstructions, its state,
and the configs that turn it on."""

import copy

import pytest
import torch

from opensora_vae.config import ConfigError, load_config
from opensora_vae.distributed import DistEnv
from opensora_vae.losses import discriminator_loss, frames_l1, generator_loss
from opensora_vae.models.discriminator import fit_clip_length
from opensora_vae.training.adversarial import AdversarialPhase, AdversarialSettings
from tests.helpers import REPO

TRAIN = REPO / "configs/vae/train"
ENV = DistEnv(0, 1, 0, torch.device("cpu"))
FRAMES, SIZE = 9, 16


def gan_cfg(**options):
    opts = {"dataset.image_size": [SIZE, SIZE], "dataset.num_frames": FRAMES, **options}
    return load_config(TRAIN / "tiny/stage3_gan.py", cfg_options=opts).to_dict()


class ToyGenerator(torch.nn.Module):
    """x_rec = tanh(conv_out(h)): `conv_out` plays the temporal decoder's output conv."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.h = torch.nn.Parameter(torch.randn(2, 4, FRAMES, SIZE, SIZE))
        self.conv_out = torch.nn.Conv3d(4, 3, 1)

    def forward(self, frames):
        return torch.tanh(self.conv_out(self.h[:, :, :frames]))


def vae_terms(video, x_rec):
    pixel = frames_l1(video, x_rec)
    return {"pixel_l1": pixel, "loss": pixel}


@pytest.fixture
def setup():
    torch.manual_seed(1)
    gen = ToyGenerator()
    phase = AdversarialPhase(gan_cfg(), ENV, gen.conv_out, 10)
    video = torch.rand(2, 3, FRAMES, SIZE, SIZE) * 2 - 1
    return gen, phase, video


def test_the_terms_act_after_discriminator_start_only():
    cfg = gan_cfg()
    s = AdversarialSettings.from_config(cfg)
    assert s.discriminator_start == -1 and s.active(1)
    s = AdversarialSettings.from_config({**cfg, "discriminator_start": 3})
    # The reference's 0-based step index 3 is our step 4: the first 3 steps have no term.
    assert [s.active(k) for k in (1, 2, 3, 4, 5)] == [False, False, False, True, True]
    assert not AdversarialSettings.from_config({**cfg, "discriminator_factor": 0.0}).active(10)


@pytest.mark.parametrize("frames", [FRAMES, 3, 1])
def test_generator_term_is_adaptive_weight_times_factor_times_g_loss(setup, frames):
    gen, phase, video = setup
    video = video[:, :, :frames]
    x_rec = gen(frames)
    terms = phase.add_generator_term(vae_terms(video, x_rec), x_rec, step=1)
    # By hand: D on the padded window, the two gradient norms at conv_out.weight.
    logits = phase.discriminator(fit_clip_length(x_rec, FRAMES))
    g = generator_loss(logits, "hinge")
    grad_nll = torch.autograd.grad(frames_l1(video, x_rec), gen.conv_out.weight, retain_graph=True)[0]
    grad_g = torch.autograd.grad(g, gen.conv_out.weight, retain_graph=True)[0]
    weight = grad_nll.norm() / (grad_g.norm() + 1e-4)
    torch.testing.assert_close(terms["adversarial"], (weight * 0.5 * g).detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(terms["loss"], terms["pixel_l1"] + terms["adversarial"])
    terms["loss"].backward()
    assert gen.conv_out.weight.grad is not None
    # D is trained only by its own step: the generator's loss leaves its weights without gradients.
    assert all(p.grad is None and p.requires_grad for p in phase.discriminator.parameters())


def test_a_last_layer_the_gradient_cannot_reach_is_a_clear_error(setup):
    gen, _, video = setup

    class ShardedLike(torch.nn.Module):  # what FSDP2 leaves when it resharded the layer
        weight = type("DTensorLike", (), {"full_tensor": lambda self: None})()

    x_rec = gen(FRAMES)
    with pytest.raises(RuntimeError, match="still sharded \\(FSDP\\)"):
        AdversarialPhase(gan_cfg(), ENV, ShardedLike(), 10).add_generator_term(vae_terms(video, x_rec), x_rec, 1)
    with pytest.raises(RuntimeError, match="output conv weight is not part of this step's graph"):
        AdversarialPhase(gan_cfg(), ENV, torch.nn.Conv3d(4, 3, 1), 10).add_generator_term(vae_terms(video, x_rec), x_rec, 1)


def test_before_the_start_nothing_is_added_and_d_is_not_updated(setup):
    gen, _, video = setup
    phase = AdversarialPhase(gan_cfg(discriminator_start=2), ENV, gen.conv_out, 10)
    before = copy.deepcopy(phase.discriminator.state_dict())
    x_rec = gen(FRAMES)
    terms = vae_terms(video, x_rec)
    assert phase.add_generator_term(terms, x_rec, step=2) is terms and "adversarial" not in terms
    assert phase.discriminator_step(video, x_rec, step=2) == {}
    for k, v in phase.discriminator.state_dict().items():
        assert torch.equal(v, before[k])


def test_discriminator_step_trains_d_on_detached_reconstructions(setup):
    gen, phase, video = setup
    x_rec = gen(5)
    video = video[:, :, :5]
    terms = phase.add_generator_term(vae_terms(video, x_rec), x_rec, step=1)
    with torch.no_grad():
        logits = phase.discriminator(torch.cat([fit_clip_length(video, FRAMES), fit_clip_length(x_rec, FRAMES)]))
    expected = discriminator_loss(logits[:2], logits[2:], "hinge")
    terms["loss"].backward()  # the trainer's VAE backward comes first: it needs D's weights as they were
    vae_grads = [gen.h.grad.clone(), gen.conv_out.weight.grad.clone()]
    before = copy.deepcopy(phase.discriminator.state_dict())
    metrics = phase.discriminator_step(video, x_rec, step=1)
    assert metrics["gan/d_loss"] == pytest.approx(expected.item(), rel=1e-5)
    assert metrics["gan/logits_real"] == pytest.approx(logits[:2].mean().item(), rel=1e-5)
    assert metrics["gan/logits_fake"] == pytest.approx(logits[2:].mean().item(), rel=1e-5)
    assert metrics["gan/g_loss"] == pytest.approx(-logits[2:].mean().item(), rel=1e-5)
    assert metrics["gan/d_weight"] > 0 and metrics["gan/d_update_skipped"] == 0
    assert "gan/lecam" not in metrics  # lecam_loss_weight None: no term, no EMA update
    assert phase.lecam.real == 0
    changed = [k for k, v in phase.discriminator.state_dict().items() if not torch.equal(v, before[k])]
    assert "linear2.weight" in changed and "conv1.weight" in changed
    assert all(".blur.filt" not in k for k in changed)  # the blur filters are constants
    # The VAE gets nothing from D's step (it sees the reconstruction detached).
    assert torch.equal(gen.h.grad, vae_grads[0]) and torch.equal(gen.conv_out.weight.grad, vae_grads[1])


def test_lecam_and_gradient_penalty_enter_the_d_loss_and_the_ema_is_state(setup):
    gen, _, video = setup
    phase = AdversarialPhase(gan_cfg(lecam_loss_weight=0.5, gradient_penalty_loss_weight=10.0), ENV,
                             gen.conv_out, 10)
    x_rec = gen(FRAMES)
    first = phase.discriminator_step(video, x_rec, step=1)
    # EMAs start at 0: the first penalty is relu(real)^2 + relu(-fake)^2, then the EMAs move by 0.1%.
    real, fake = first["gan/logits_real"], first["gan/logits_fake"]
    assert first["gan/lecam"] == pytest.approx(0.5 * (max(real, 0) ** 2 + max(-fake, 0) ** 2), rel=1e-4, abs=1e-9)
    assert first["gan/gradient_penalty"] > 0
    assert phase.lecam.real.item() == pytest.approx(0.001 * real) and phase.lecam.fake.item() == pytest.approx(0.001 * fake)
    phase.discriminator_step(video, x_rec, step=2)

    # A fresh phase loaded from the states continues identically.
    states = {name: copy.deepcopy(obj.state_dict()) for name, obj in phase.states().items()}
    assert set(states) == {"discriminator", "discriminator_optimizer", "discriminator_lr_scheduler", "lecam_ema"}
    other = AdversarialPhase(gan_cfg(lecam_loss_weight=0.5, gradient_penalty_loss_weight=10.0), ENV, gen.conv_out, 10)
    for name, obj in other.states().items():
        obj.load_state_dict(states[name])
    a, b = phase.discriminator_step(video, x_rec, step=3), other.discriminator_step(video, x_rec, step=3)
    assert a == b
    for k, v in phase.discriminator.state_dict().items():
        assert torch.equal(v, other.discriminator.state_dict()[k]), k
    assert torch.equal(phase.lecam.real, other.lecam.real)


def test_the_discriminator_lr_schedule_runs_over_the_steps_it_trains(setup):
    gen, _, video = setup
    x_rec = gen(FRAMES)
    schedule = {"kind": "linear", "warmup_steps": 2, "min_lr_ratio": 0.0}
    phase = AdversarialPhase(gan_cfg(discriminator_start=3, discriminator_lr=1e-4,
                                     discriminator_lr_schedule=schedule), ENV, gen.conv_out, 7)
    lrs = [phase.discriminator_step(video, x_rec, step).get("gan/d_lr") for step in range(1, 8)]
    # Steps 1-3 are before the start; then warmup over 2 of the 4 active steps, linear decay to 0 at the last.
    assert lrs[:3] == [None] * 3
    assert lrs[3:] == pytest.approx([0.5e-4, 1e-4, 1e-4, 0.0])


def test_a_non_finite_d_gradient_skips_the_d_update(setup):
    gen, phase, video = setup
    before = copy.deepcopy(phase.discriminator.state_dict())
    metrics = phase.discriminator_step(video * float("nan"), gen(FRAMES), step=1)
    assert metrics["gan/d_update_skipped"] == 1
    for k, v in phase.discriminator.state_dict().items():
        assert torch.equal(v, before[k])
    assert phase.lecam.real == 0


# ----------------------------------------------------------------------------- configs
SIZE_KEYS = {"model", "num_workers", "dtype", "grad_checkpoint", "ckpt_every", "preview_every", "outputs",
             "config_path", "discriminator"}
ADVERSARIAL_DEFAULTS = dict(discriminator_start=-1, discriminator_factor=1, generator_factor=0.5,
                            generator_loss_type="hinge", discriminator_loss_type="hinge", lecam_loss_weight=None,
                            gradient_penalty_loss_weight=None)


def test_stage_configs_keep_it_off_and_stage3_gan_turns_it_on_with_the_reference_settings():
    for stage in (1, 2, 3):
        assert load_config(TRAIN / f"stage{stage}.py").discriminator is None
        assert load_config(TRAIN / f"tiny/stage{stage}.py").discriminator is None
    gan = load_config(TRAIN / "stage3_gan.py").to_dict()
    stage3 = load_config(TRAIN / "stage3.py").to_dict()
    assert gan["discriminator"] == {"filters": 128, "channel_multipliers": (2, 4, 4, 4, 4), "num_groups": 32}
    assert {k: gan[k] for k in ADVERSARIAL_DEFAULTS} == ADVERSARIAL_DEFAULTS
    assert (gan["discriminator_lr"], gan["discriminator_weight_decay"], gan["discriminator_grad_clip"]) == (1e-5, 0, 1)
    # Everything else is stage 3's recipe.
    differ = {k for k in gan if gan[k] != stage3.get(k)}
    assert differ == {"discriminator", "outputs", "config_path"}
    tiny = load_config(TRAIN / "tiny/stage3_gan.py").to_dict()
    for key in gan:
        if key == "dataset":
            assert {k: v for k, v in tiny[key].items() if k != "image_size"} == \
                {k: v for k, v in gan[key].items() if k != "image_size"}
        elif key not in SIZE_KEYS:
            assert tiny[key] == gan[key], key


@pytest.mark.parametrize("options,message", [
    ({"generator_loss_type": "vanilla"}, "'generator_loss_type' = 'vanilla': must be one of 'hinge', 'non-saturating'"),
    ({"discriminator_loss_type": "wgan"}, "'discriminator_loss_type' = 'wgan'"),
    ({"discriminator_start": -5}, "'discriminator_start' = -5"),
    ({"lecam_loss_weight": -1.0}, "'lecam_loss_weight' = -1.0"),
    ({"discriminator_lr": 0}, "'discriminator_lr' = 0"),
    ({"dataset.image_size": [36, 32]}, "must be divisible by 2^3 = 8"),
    ({"dataset.num_frames": 4}, "more than 4 frames"),
    ({"discriminator": {"filtrs": 8}}, "unknown key 'discriminator.filtrs' (did you mean 'discriminator.filters'?)"),
    ({"discriminator": {"filters": 16}}, "num_channels (16) must be divisible by num_groups (32)"),
    ({"use_real_rec_loss": False, "use_z_rec_loss": True}, "needs use_real_rec_loss=True"),
])
def test_bad_adversarial_settings_fail_before_any_work(options, message):
    with pytest.raises(ConfigError) as err:
        load_config(TRAIN / "tiny/stage3_gan.py", cfg_options=options)
    assert message in str(err.value)


# ----------------------------------------------------------------------------- in the trainer
def test_a_tiny_run_trains_the_discriminator_and_logs_its_terms(tmp_path):
    import math

    from opensora_vae.training import Trainer
    from tests.helpers import make_media_csv

    csv = make_media_csv(tmp_path / "data", num_images=1)
    cfg = load_config(TRAIN / "tiny/stage3_gan.py", cfg_options={
        "dataset.image_size": [32, 32], "dataset.num_frames": 17, "max_steps": 4, "perceptual_random_backbone": True,
        "lecam_loss_weight": 0.001, "discriminator_start": 1, "seed": 3},
        cli={"data_path": str(csv), "outputs": str(tmp_path / "out")})
    trainer = Trainer(cfg)
    initial = copy.deepcopy(trainer.adversarial.discriminator.state_dict())
    history = list(trainer.fit().history)
    assert len(history) == 4 and not any(h["train/update_skipped"] for h in history)
    # Step 1 is before discriminator_start=1: no adversarial term, no D step.
    assert not any(k.startswith("gan/") for k in history[0]) and "loss/adversarial" not in history[0]
    gan_keys = {"gan/d_loss", "gan/g_loss", "gan/d_weight", "gan/logits_real", "gan/logits_fake", "gan/lecam",
                "loss/adversarial"}
    for h in history[1:]:
        assert gan_keys <= h.keys() and all(math.isfinite(h[k]) for k in gan_keys)
        # The weighted term is d_weight × generator_factor (0.5) × g_loss, within the rank mean's rounding.
        assert h["loss/adversarial"] == pytest.approx(h["gan/d_weight"] * 0.5 * h["gan/g_loss"], rel=1e-4)
        assert h["gan/d_update_skipped"] == 0
    assert len({h["num_frames"] for h in history}) > 1  # random prefixes, padded to D's 17-frame window
    final = trainer.adversarial.discriminator.state_dict()
    assert not torch.equal(final["linear1.weight"], initial["linear1.weight"])

    # Resuming it without the discriminator would lose its state: refused, naming the key.
    from opensora_vae.training.checkpoint import StateWouldVanishError

    off = load_config(TRAIN / "tiny/stage3_gan.py", cfg_options={
        "dataset.image_size": [32, 32], "dataset.num_frames": 17, "max_steps": 5, "perceptual_random_backbone": True,
        "discriminator": None}, cli={"data_path": str(csv), "outputs": str(tmp_path / "out"), "load": "auto"})
    with pytest.raises(StateWouldVanishError) as err:
        Trainer(off)
    assert "'discriminator', 'discriminator_lr_scheduler', 'discriminator_optimizer', 'lecam_ema'" in str(err.value)
    assert "discriminator=<the run's dict" in str(err.value)
