"""The discriminator is the reference's StyleGANDiscriminatorBlur: same state_dict keys and shapes,
same logits for the same weights (golden outputs made by running the reference code), its init,
and a clip-length policy that never crashes on stage 3's 1..33-frame clips."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from opensora_vae.models.discriminator import StyleGANDiscriminator3D, fit_clip_length
from tests.helpers import TEST_ASSETS

GOLDEN = json.loads((TEST_ASSETS / "golden_discriminator.json").read_text())
GOLDEN_TENSORS = load_file(TEST_ASSETS / "golden_discriminator_small.safetensors")


def reference_state():
    return {k[len("state."):]: v for k, v in GOLDEN_TENSORS.items() if k.startswith("state.")}


@pytest.mark.parametrize("frames", [17, 33])
def test_state_dict_keys_and_shapes_are_the_references(frames):
    with torch.device("meta"):
        model = StyleGANDiscriminator3D(image_size=(256, 256), num_frames=frames)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == GOLDEN["state_dict_shapes"][f"256x256x{frames}"]


def test_reference_weights_load_strictly_and_give_the_reference_logits():
    config = GOLDEN["small_config"]
    model = StyleGANDiscriminator3D(**config)
    model.load_state_dict(reference_state(), strict=True)
    logits = model(GOLDEN_TENSORS["input"])
    assert logits.shape == (2, 1)
    torch.testing.assert_close(logits, GOLDEN_TENSORS["logits"], rtol=1e-5, atol=1e-5)


def functional_reference(state, x, num_groups):
    """The reference forward re-expressed with plain functions on its state dict (reflection pad)."""
    act = lambda v: F.leaky_relu(v, 0.2)  # noqa: E731

    def blur(v, filt):
        return F.conv3d(F.pad(v, (1,) * 6, mode="reflect"), filt, stride=2, groups=v.shape[1])

    x = act(F.conv3d(x, state["conv1.weight"], state["conv1.bias"], padding=1))
    i = 0
    while f"res_block_list.{i}.conv1.weight" in state:
        p = lambda n: state[f"res_block_list.{i}.{n}"]  # noqa: E731
        h = act(F.group_norm(F.conv3d(x, p("conv1.weight"), p("conv1.bias"), padding=1), 32,
                             p("norm1.weight"), p("norm1.bias")))
        h = act(F.group_norm(F.conv3d(blur(h, p("blur.filt")), p("conv3.weight"), p("conv3.bias"), padding=1), 32,
                             p("norm2.weight"), p("norm2.bias")))
        x = (F.conv3d(blur(x, p("blur.filt")), p("conv2.weight")) + h) / math.sqrt(2)
        i += 1
    x = act(F.group_norm(F.conv3d(x, state["conv2.weight"], state["conv2.bias"], padding=1), num_groups,
                         state["norm1.weight"], state["norm1.bias"]))
    x = act(F.linear(x.flatten(1), state["linear1.weight"], state["linear1.bias"]))
    return F.linear(x, state["linear2.weight"], state["linear2.bias"])


def test_forward_is_the_reference_computation_for_other_weights_and_inputs():
    config = GOLDEN["small_config"]
    torch.manual_seed(3)
    model = StyleGANDiscriminator3D(**config)
    x = torch.randn(3, 3, 9, 16, 32)
    expected = functional_reference(model.state_dict(), x, config["num_groups"])
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    # The blur filter is [1,2,1]^3 / 64 on every channel.
    taps = torch.tensor([1.0, 2.0, 1.0])
    kernel = (taps[:, None, None] * taps[None, :, None] * taps[None, None, :]) / 64
    assert torch.equal(model.res_block_list[1].blur.filt[5, 0], kernel)


def test_init_is_xavier_uniform_with_relu_gain_and_zero_bias():
    torch.manual_seed(0)
    model = StyleGANDiscriminator3D(image_size=(32, 32), num_frames=9, filters=32, channel_multipliers=(1, 2))
    gain = math.sqrt(2.0)
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Conv3d, torch.nn.Linear)):
            fan_in, fan_out = torch.nn.init._calculate_fan_in_and_fan_out(module.weight)
            bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
            w = module.weight.detach()
            assert w.abs().max() <= bound, name
            if w.numel() > 10_000:  # uniform on [-b, b]: std b/sqrt(3)
                assert abs(w.std().item() - bound / math.sqrt(3)) < 0.05 * bound, name
            if module.bias is not None:
                assert torch.count_nonzero(module.bias) == 0, name


def test_sizes_that_cannot_work_are_refused_with_a_reason():
    with pytest.raises(ValueError, match="divisible by 2\\^5 = 32"):
        StyleGANDiscriminator3D(image_size=(48, 64), num_frames=33)
    # Reflection padding at the 5th block needs 2 frames there: 16 frames become 1.
    with pytest.raises(ValueError, match="more than 16 frames"):
        StyleGANDiscriminator3D(image_size=(64, 64), num_frames=16)
    model = StyleGANDiscriminator3D(image_size=(16, 16), num_frames=5, filters=32, channel_multipliers=(1, 1))
    with pytest.raises(ValueError, match="fit_clip_length"):
        model(torch.zeros(1, 3, 4, 16, 16))


def test_every_stage3_clip_length_becomes_a_window_by_repeating_the_last_frame():
    torch.manual_seed(0)
    model = StyleGANDiscriminator3D(image_size=(16, 16), num_frames=9, filters=32, channel_multipliers=(1, 1))
    video = torch.randn(2, 3, 9, 16, 16)
    for t in range(1, 10):
        window = fit_clip_length(video[:, :, :t], 9)
        assert window.shape == (2, 3, 9, 16, 16)
        assert torch.equal(window[:, :, :t], video[:, :, :t])
        assert torch.equal(window[:, :, t:], video[:, :, t - 1:t].expand(-1, -1, 9 - t, -1, -1))
        assert torch.isfinite(model(window)).all()
    assert fit_clip_length(video, 9) is video
    with pytest.raises(ValueError, match="longer than"):
        fit_clip_length(video, 8)
    # Gradients of the padded copies reach the last real frame.
    clip = video[:, :, :3].clone().requires_grad_(True)
    model(fit_clip_length(clip, 9)).sum().backward()
    assert clip.grad[:, :, 2].abs().sum() > 0
