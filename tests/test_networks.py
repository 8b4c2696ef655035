"""Tests of networks.RIBCUNet and its blocks against the maths of the method (residual Inception blocks,
bidirectional ConvGRU skip fusion), as ``networks/ribcunet.py`` states it."""

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from monai.bundle import ConfigParser

from networks import BiConvGRUFusion, ConvGRUCell, DoubleConv, ResidualInception, RIBCUNet
from networks.export import export_onnx
from networks.preprocessing import ShadesOfGrey

SMALL = (4, 8, 16, 32, 64)
VARIANTS = [(False, False), (True, False), (False, True), (True, True)]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def reference_gru_step(cell: ConvGRUCell, x, h):
    """The four ConvGRU equations, line by line, with separate convolutions for each weight."""
    c = cell.hidden_channels
    # input weights in equation order z, r, candidate
    wx = torch.cat([cell.conv_x_zc.weight[:c], cell.conv_x_r.weight, cell.conv_x_zc.weight[c:]])
    bx = torch.cat([cell.conv_x_zc.bias[:c], cell.conv_x_r.bias, cell.conv_x_zc.bias[c:]])
    wh = cell.conv_h.weight
    pad = cell.conv_x_r.padding
    conv = F.conv2d if x.dim() == 4 else F.conv3d

    def wx_(i, inp):
        return conv(inp, wx[i * c : (i + 1) * c], bx[i * c : (i + 1) * c], padding=pad)

    def wh_(i, state):
        return conv(state, wh[i * c : (i + 1) * c], None, padding=pad)

    z = torch.sigmoid(wx_(0, x) + wh_(0, h))
    r = torch.sigmoid(wx_(1, x) + wh_(1, h))
    candidate = torch.tanh(wx_(2, x) + r * wh_(2, h))
    return (1 - z) * candidate + z * h


def randomise(module):
    """Random weights everywhere, biases included, so a test cannot pass on zero-initialised terms."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return module


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_convgru_cell_matches_equations(spatial_dims):
    cell = randomise(ConvGRUCell(spatial_dims, in_channels=3, hidden_channels=5)).double()
    size = (6,) * spatial_dims
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    h = torch.randn(2, 5, *size, dtype=torch.float64)
    torch.testing.assert_close(cell(x, h), reference_gru_step(cell, x, h), atol=1e-5, rtol=0)
    # None is the all-zero initial state, computed without convolving zeros
    torch.testing.assert_close(cell(x), reference_gru_step(cell, x, torch.zeros_like(h)), atol=1e-5, rtol=0)
    assert cell(x).shape == h.shape


def test_convgru_zero_state_skips_vanishing_convolutions():
    """From the zero state neither the recurrent convolution nor the reset gate's input convolution runs."""
    cell = ConvGRUCell(2, 3, 4)
    calls = []
    cell.conv_h.register_forward_hook(lambda *_: calls.append("h"))
    cell.conv_x_r.register_forward_hook(lambda *_: calls.append("r"))
    cell(torch.randn(1, 3, 8, 8))
    assert calls == []
    cell(torch.randn(1, 3, 8, 8), torch.randn(1, 4, 8, 8))
    assert sorted(calls) == ["h", "r"]


def test_convgru_rejects_even_kernel():
    with pytest.raises(ValueError, match="odd kernel_size"):
        ConvGRUCell(2, 3, 4, kernel_size=2)


def test_bidirectional_fusion_matches_equations():
    fusion = randomise(BiConvGRUFusion(2, channels=4)).double()
    skip = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    up = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    zeros = torch.zeros_like(skip)
    fwd, bwd = fusion.forward_cell, fusion.backward_cell
    h_fwd = reference_gru_step(fwd, up, reference_gru_step(fwd, skip, zeros))  # reads skip, then up
    h_bwd = reference_gru_step(bwd, skip, reference_gru_step(bwd, up, zeros))  # reads up, then skip
    w, b = fusion.combine.weight, fusion.combine.bias
    expected = torch.tanh(F.conv2d(h_fwd, w[:, :4]) + F.conv2d(h_bwd, w[:, 4:]) + b.view(1, -1, 1, 1))
    torch.testing.assert_close(fusion(skip, up), expected, atol=1e-5, rtol=0)


def test_bidirectional_fusion_is_order_sensitive():
    fusion = randomise(BiConvGRUFusion(2, channels=4)).eval()
    a, b = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    assert not torch.allclose(fusion(a, b), fusion(b, a))


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("in_channels,out_channels", [(8, 8), (3, 16)])
def test_residual_inception_shapes_and_kernels(spatial_dims, in_channels, out_channels):
    block = ResidualInception(spatial_dims, in_channels, out_channels)
    size = (8,) * spatial_dims
    assert block(torch.randn(2, in_channels, *size)).shape == (2, out_channels, *size)
    convs = [m for m in block.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))]
    three = [m for m in convs if m.kernel_size == (3,) * spatial_dims]
    one = [m for m in convs if m.kernel_size == (1,) * spatial_dims]
    assert len(three) == 3  # one 3x3 in branch 2, two in branch 3
    # the 1x1 convolutions are fused: branch-1 output, two reductions, and the shortcut where channels change
    assert sum(m.out_channels for m in one) == out_channels // 4 + 2 * (out_channels // 4) + (
        out_channels if in_channels != out_channels else 0
    )


def test_residual_inception_is_residual():
    """With every branch's last normalisation zeroed, the block is act(input): the identity shortcut."""
    block = ResidualInception(2, 8, 8).eval()
    with torch.no_grad():
        block.pointwise[1].weight.zero_()
        block.pointwise[1].bias.zero_()
        block.branch2.adn.N.weight.zero_()
        block.branch2.adn.N.bias.zero_()
        block.branch3[1].adn.N.weight.zero_()
        block.branch3[1].adn.N.bias.zero_()
    x = torch.randn(1, 8, 8, 8)
    torch.testing.assert_close(block(x), torch.relu(x))


def test_residual_inception_rejects_tiny_width():
    with pytest.raises(ValueError, match="out_channels >= 4"):
        ResidualInception(2, 3, 2)


def test_double_conv_shape():
    assert DoubleConv(2, 3, 8)(torch.randn(1, 3, 16, 16)).shape == (1, 8, 16, 16)


@pytest.mark.parametrize("residual_inception,bi_convgru", VARIANTS)
@pytest.mark.parametrize("spatial_dims,size", [(2, (32, 48)), (3, (16, 16, 32))])
def test_forward_shape_all_variants(residual_inception, bi_convgru, spatial_dims, size):
    net = RIBCUNet(spatial_dims, 3, 2, SMALL, residual_inception=residual_inception, bi_convgru=bi_convgru)
    assert net(torch.randn(2, 3, *size)).shape == (2, 2, *size)


def test_four_variants_have_four_parameter_counts():
    counts = {sum(p.numel() for p in RIBCUNet(channels=SMALL, residual_inception=ri, bi_convgru=bg).parameters()) for ri, bg in VARIANTS}
    assert len(counts) == 4


def test_plain_variant_is_a_unet():
    net = RIBCUNet(channels=SMALL, residual_inception=False, bi_convgru=False)
    names = {type(m).__name__ for m in net.modules()}
    assert "ResidualInception" not in names and "BiConvGRUFusion" not in names
    assert "ConcatFusion" in names and "DoubleConv" in names


@pytest.mark.parametrize("size", [(30, 32), (32, 40), (8, 16)])
def test_bad_size_names_the_size(size):
    net = RIBCUNet(channels=SMALL)
    with pytest.raises(ValueError, match=str(list(size)).replace("[", r"\[").replace("]", r"\]")):
        net(torch.randn(1, 3, *size))


def test_constructor_validation():
    with pytest.raises(ValueError, match="five level widths"):
        RIBCUNet(channels=(4, 8, 16))
    with pytest.raises(ValueError, match="spatial_dims"):
        RIBCUNet(spatial_dims=1)


@pytest.mark.parametrize("residual_inception,bi_convgru", VARIANTS)
def test_torchscript_matches_eager(residual_inception, bi_convgru):
    net = RIBCUNet(channels=SMALL, residual_inception=residual_inception, bi_convgru=bi_convgru).eval()
    x = torch.rand(2, 3, 32, 32)
    scripted = torch.jit.script(net)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x), atol=1e-4, rtol=0)
    # and through a save/load round trip, as the bundle exports it
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(buffer)(x), net(x), atol=1e-4, rtol=0)


def test_onnx_export_matches_eager(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    net = RIBCUNet(channels=SMALL).eval()
    x = torch.rand(1, 3, 64, 64)
    path = tmp_path / "ribcunet.onnx"
    torch.onnx.export(net, (x,), str(path), input_names=["image"], output_names=["logits"], dynamo=False, opset_version=17)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(out, net(x).numpy(), atol=1e-4, rtol=0)


def test_shades_of_grey_removes_a_global_colour_cast():
    image = torch.rand(2, 3, 32, 32) * 0.4 + 0.1
    image[:, 0] *= 0.8  # this image has a cast of its own
    cast = image * torch.tensor([1.3, 1.0, 0.7])[None, :, None, None]  # a warm light, no clipping
    layer = ShadesOfGrey()
    # the cast is gone; the overall brightness (root mean square of the light) is kept, so a scalar remains
    ratio = layer(cast) / layer(image)
    torch.testing.assert_close(ratio, ratio.mean(dim=(1, 2, 3), keepdim=True).expand_as(ratio), atol=1e-4, rtol=0)
    # and what is left is neutral: the channels' p-norm means are equal
    light = layer(image).pow(6).mean(dim=(2, 3)).pow(1 / 6)
    torch.testing.assert_close(light, light.mean(dim=1, keepdim=True).expand_as(light), atol=1e-4, rtol=0)
    assert layer(torch.zeros(1, 3, 8, 8)).eq(0).all()  # a black image stays black, no division by zero


def test_colour_constancy_is_inside_the_scripted_and_exported_network(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    net = RIBCUNet(channels=SMALL, colour_constancy="shades_of_grey").eval()
    assert isinstance(net.colour_constancy, ShadesOfGrey)
    x = torch.rand(2, 3, 32, 32) * 0.4 + 0.1
    cast = x * torch.tensor([0.8, 1.0, 1.2])[None, :, None, None]
    with torch.no_grad():
        assert not torch.allclose(net.colour_constancy(cast), cast, atol=1e-3)
        torch.testing.assert_close(torch.jit.script(net)(cast), net(cast), atol=1e-4, rtol=0)
    path = tmp_path / "cc.onnx"
    export_onnx(net, path, example_shape=(1, 3, 32, 32))
    (out,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": cast.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(out, net(cast).numpy(), atol=1e-4, rtol=0)
    # the weights are those of a network without it: a checkpoint loads either way
    RIBCUNet(channels=SMALL).load_state_dict(net.state_dict())
    with pytest.raises(ValueError, match="colour_constancy"):
        RIBCUNet(channels=SMALL, colour_constancy="grey_world")


def test_state_dict_round_trip():
    a = RIBCUNet(channels=SMALL).eval()
    b = RIBCUNet(channels=SMALL).eval()
    x = torch.rand(1, 3, 32, 32)
    assert not torch.allclose(a(x), b(x))
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    b.load_state_dict(torch.load(buffer, weights_only=True))
    torch.testing.assert_close(a(x), b(x))


@pytest.mark.parametrize("residual_inception,bi_convgru", VARIANTS)
def test_gradients_reach_every_parameter(residual_inception, bi_convgru):
    net = RIBCUNet(channels=SMALL, residual_inception=residual_inception, bi_convgru=bi_convgru)
    net(torch.rand(2, 3, 32, 32)).square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []


def test_eval_is_deterministic_and_dropout_only_in_train():
    net = RIBCUNet(channels=SMALL, dropout=0.5)
    x = torch.rand(1, 3, 32, 32)
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), net(x), atol=0, rtol=0)
    net.train()
    assert not torch.allclose(net(x), net(x))


def test_act_and_norm_are_configurable():
    net = RIBCUNet(channels=SMALL, act=("leakyrelu", {"negative_slope": 0.1}), norm=("instance", {"affine": True}))
    kinds = {type(m).__name__ for m in net.modules()}
    assert "LeakyReLU" in kinds and "InstanceNorm2d" in kinds and "BatchNorm2d" not in kinds
    assert net(torch.rand(1, 3, 32, 32)).shape == (1, 1, 32, 32)


def test_instantiable_from_bundle_config():
    parser = ConfigParser({"network_def": {"_target_": "networks.RIBCUNet", "spatial_dims": 2, "channels": list(SMALL)}})
    net = parser.get_parsed_content("network_def").eval()
    assert isinstance(net, RIBCUNet)
    assert net(torch.rand(1, 3, 16, 16)).shape == (1, 1, 16, 16)
