import pytest
import torch

from fna_ext import _extension
from fna_ext.ops import batched_nms, batched_nms_reference, nms, nms_reference

needs_kernel = pytest.mark.skipif(not _extension.has_kernel("nms", "cpu"),
                                  reason="the compiled extension is not loaded")


def random_boxes(n, seed=0, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 100
    wh = torch.rand(n, 2, generator=g) * 40 + 0.5
    scores = torch.rand(n, generator=g)
    return torch.cat([xy, xy + wh], 1).to(device, dtype), scores.to(device, dtype)


def brute_force(boxes, scores, threshold, groups=None):
    """Greedy NMS straight from the definition, in Python floats."""
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))  # sorted() is stable
    b = boxes.double().tolist()

    def iou(i, j):
        w = max(0.0, min(b[i][2], b[j][2]) - max(b[i][0], b[j][0]))
        h = max(0.0, min(b[i][3], b[j][3]) - max(b[i][1], b[j][1]))
        area = lambda k: (b[k][2] - b[k][0]) * (b[k][3] - b[k][1])  # noqa: E731
        return w * h / (area(i) + area(j) - w * h)

    keep = []
    for i in order:
        if all(iou(k, i) <= threshold or (groups is not None and groups[k] != groups[i]) for k in keep):
            keep.append(i)
    return keep


def test_by_hand():
    # Box 3 covers box 0 exactly and box 1 with IoU 81/119 = 0.68; box 2 overlaps nothing.
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10.]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    assert nms(boxes, scores, 0.5).tolist() == [3, 2]
    assert nms(boxes, scores, 0.7).tolist() == [3, 1, 2]
    assert batched_nms(boxes, scores, torch.tensor([0, 1, 0, 0]), 0.5).tolist() == [3, 1, 2]
    assert nms_reference(boxes, scores, 0.5).tolist() == [3, 2]


@pytest.mark.parametrize("seed", range(5))
def test_reference_matches_the_definition(seed):
    boxes, scores = random_boxes(120, seed)
    groups = torch.randint(0, 3, (120,), generator=torch.Generator().manual_seed(seed))
    assert nms_reference(boxes, scores, 0.4).tolist() == brute_force(boxes, scores, 0.4)
    assert batched_nms_reference(boxes, scores, groups, 0.4).tolist() == brute_force(boxes, scores, 0.4, groups)


@needs_kernel
@pytest.mark.parametrize("n, threshold", [(1, 0.5), (64, 0.5), (65, 0.3), (1000, 0.5), (3000, 0.7)])
def test_kernel_matches_reference(n, threshold):
    boxes, scores = random_boxes(n, n)
    expected = nms_reference(boxes, scores, threshold)
    assert torch.equal(torch.ops.fna_ext.nms(boxes, scores, threshold), expected)
    groups = torch.randint(0, 5, (n,))
    assert torch.equal(torch.ops.fna_ext.batched_nms(boxes, scores, groups, threshold),
                       batched_nms_reference(boxes, scores, groups, threshold))


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_kernel_dtypes(dtype):
    boxes, scores = random_boxes(300, 1, dtype)
    assert torch.equal(nms(boxes, scores, 0.5), nms_reference(boxes, scores, 0.5))


@needs_kernel
def test_ties_keep_input_order_and_degenerate_boxes_survive():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [5, 5, 5, 5], [5, 5, 5, 5.]])
    scores = torch.tensor([0.5, 0.5, 0.9, 0.9])
    # Equal scores: the earlier box wins. Zero-area boxes have IoU 0/0: never "above".
    assert nms(boxes, scores, 0.5).tolist() == [2, 3, 0]
    empty = torch.zeros(0, 4)
    assert nms(empty, torch.zeros(0), 0.5).tolist() == []
    assert nms(empty, torch.zeros(0), 0.5).dtype == torch.long


@needs_kernel
def test_opcheck():
    boxes, scores = random_boxes(200, 3)
    torch.library.opcheck(torch.ops.fna_ext.nms.default, (boxes, scores, 0.5))
    torch.library.opcheck(torch.ops.fna_ext.batched_nms.default, (boxes, scores, torch.randint(0, 3, (200,)), 0.5))


@needs_kernel
def test_compiles_with_torch_compile():
    boxes, scores = random_boxes(100, 4)
    compiled = torch.compile(lambda b, s: torch.ops.fna_ext.nms(b, s, 0.5), backend="eager", fullgraph=True)
    assert torch.equal(compiled(boxes, scores), nms_reference(boxes, scores, 0.5))


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match=r"boxes must have shape \(N, 4\)"):
        nms(torch.zeros(3, 5), torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match=r"scores must have shape \(3,\)"):
        nms(torch.zeros(3, 4), torch.zeros(4), 0.5)
    with pytest.raises(ValueError, match=r"idxs must have shape \(3,\)"):
        batched_nms(torch.zeros(3, 4), torch.zeros(3), torch.zeros(2, dtype=torch.long), 0.5)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("n", [1, 63, 64, 65, 5000])
def test_cuda_kernel_matches_cpu(n, dtype):
    boxes, scores = random_boxes(n, n, dtype)
    groups = torch.randint(0, 7, (n,))
    cpu = nms(boxes, scores, 0.5)
    assert torch.equal(nms(boxes.cuda(), scores.cuda(), 0.5).cpu(), cpu)
    assert torch.equal(batched_nms(boxes.cuda(), scores.cuda(), groups.cuda(), 0.5).cpu(),
                       batched_nms(boxes, scores, groups, 0.5))
    torch.library.opcheck(torch.ops.fna_ext.nms.default, (boxes.cuda(), scores.cuda(), 0.5))
