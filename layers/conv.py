"""2-D convolution (cross-correlation, as in Caffe), weight W (O, C, k, k), bias b (O,):

    y[n, o, oh, ow] = b[o] + sum_{c,i,j} W[o, c, i, j] * xpad[n, c, oh*s + i, ow*s + j]

with xpad the input zero-padded by p on each side and OH = floor((H + 2p - k) / s) + 1
(``window.conv_out_size``). Backward:

    dW[o, c, i, j] = sum_{n,oh,ow} dy[n, o, oh, ow] * xpad[n, c, oh*s + i, ow*s + j]
    db[o] = sum_{n,oh,ow} dy[n, o, oh, ow]
    dx[n, c, h, w] = sum over the (o, i, j, oh, ow) with oh*s + i - p = h, ow*s + j - p = w
                     of W[o, c, i, j] * dy[n, o, oh, ow]

With ``groups`` g (AlexNet's conv2, conv4 and conv5 use 2), W is (O, C/g, k, k) and output
channels [i O/g, (i+1) O/g) see only input channels [i C/g, (i+1) C/g): the layer runs one
convolution per group on those channel blocks, each a view of its rows of W and b, and
concatenates the outputs along channels; backward hands each its block of dy and assembles dx
from the blocks.

Routes: ``layers/conv_cpu.py`` (NumPy: im2col + GEMM in cache-sized chunks of samples, an
output-side route for stride-1 layers with few outputs, a pointwise route for 1x1, channel-major
outputs, worker threads) and ``layers/conv_gpu.py`` (the kernel route: im2col, one GEMM,
col2im by ``layers/cuda/conv.cu``); ``backend.uses_kernels`` picks one per call.
"""
from layers import conv_cpu, conv_gpu, initializers, layout
from layers.backend import array_module
from layers.base import RoutedLayer
from layers.window import conv_out_size


class Conv2D(RoutedLayer):
    """Convolution with square ``ksize`` kernels, weight (O, C, k, k), bias (O,).

    ``init`` is the weight initializer (layers.initializers.get: 'he', 'xavier',
    ('gaussian', std), or a callable); the bias starts at 0.

    CPU tuning, class attributes (may be set per instance; see ``layers/conv_cpu.py``):
    ``direct`` picks the direct route (``layers/conv_direct.py``, C kernels) per pass:
    "auto" (where it measured faster), "always" or "never" (the im2col routes); ``winograd``
    ("auto", "always", "never") lets the direct route compute a 3x3 stride-1 layer's forward,
    dx and dW by Winograd's F(2x2, 3x3) (``conv_direct.winograd``: "auto" from 64 channels);
    ``direct_chunk_bytes`` bounds the samples whose planes its weight gradient sums at once.
    ``chunk_bytes`` bounds one chunk's col (a chunk holds at least one sample), and with several
    workers ``worker_chunk_bytes`` bounds each worker's too, so that each worker's col stays in
    its core's cache. A stride-1 layer with pad < k takes the output-side route in forward when
    O*H*W <= ``output_side_forward`` * C*OH*OW, in backward when
    O*H*W <= ``output_side_backward`` * C*OH*OW (its GEMMs run over the H*W input positions,
    the input-side ones over OH*OW); backward's bound is higher because that route also saves
    the input side's col2im over k*k*C rows.
    """

    cpu_route, gpu_route = conv_cpu, conv_gpu

    direct = "auto"
    winograd = "auto"
    direct_chunk_bytes = 1 << 20
    chunk_bytes = 8 << 20
    worker_chunk_bytes = 4 << 20
    output_side_forward = 1.0
    output_side_backward = 1.5
    fuse_relu = False       # an in-place ReLU follows (set by Sequential; the kernel route
                            # rectifies in its bias pass, layers/conv_gpu.py)

    def __init__(self, in_ch, out_ch, ksize, stride=1, pad=0, bias=True, init="he", groups=1):
        super().__init__()
        if not isinstance(ksize, int) or ksize < 1 or stride < 1 or pad < 0:
            raise ValueError(f"Conv2D: need an int ksize >= 1, stride >= 1, pad >= 0; "
                             f"got ksize={ksize!r}, stride={stride}, pad={pad}")
        if not isinstance(groups, int) or groups < 1 or in_ch % groups or out_ch % groups:
            raise ValueError(f"Conv2D: groups must be an int >= 1 dividing the {in_ch} input and "
                             f"{out_ch} output channels, got {groups!r}")
        self.in_ch, self.out_ch, self.k, self.stride, self.pad = in_ch, out_ch, ksize, stride, pad
        self.groups = groups
        self.pointwise = ksize == 1 and stride == 1 and pad == 0
        self.param_shapes["W"] = (out_ch, in_ch // groups, ksize, ksize)
        self.initializers["W"] = initializers.get(init)
        if bias:
            self.param_shapes["b"] = (out_ch,)
            self.initializers["b"] = initializers.Constant(0.0)
        # one convolution per group, bound to its rows of W and b at every forward
        self.group_convs = [Conv2D(in_ch // groups, out_ch // groups, ksize, stride, pad, bias,
                                   init) for _ in range(groups)] if groups > 1 else []


    def rectifies(self, xp):
        """With ``fuse_relu``: whether this layer applies the ReLU after it, for arrays of
        ``xp`` (the kernel route's bias pass); the ReLU still masks dy."""
        return self.route(xp) is self.gpu_route

    def masks(self, xp):
        return False

    def out_shape(self, x_shape):
        """(N, O, OH, OW) for an input of shape (N, C, H, W)."""
        n, _, h, w = x_shape
        k, s, p = self.k, self.stride, self.pad
        return n, self.out_ch, conv_out_size(h, k, s, p), conv_out_size(w, k, s, p)

    def _output_side(self, ratio, x_shape):
        """Whether the output-side route is used: stride 1, pad < k, O*H*W <= ratio * C*OH*OW."""
        _, c, h, w = x_shape
        k, p = self.k, self.pad
        return not self.pointwise and self.stride == 1 and p < k and self.out_ch * h * w <= \
            ratio * c * conv_out_size(h, k, 1, p) * conv_out_size(w, k, 1, p)

    def _chunk(self, n, rows, l, itemsize, workers=1):
        """Samples per chunk: as many as keep a (rows, g*l) buffer within ``chunk_bytes``, or
        with several workers within ``worker_chunk_bytes`` too (at least one), and at most one
        worker's share of the n samples."""
        share = -(-n // max(1, min(workers, n)))
        limit = self.chunk_bytes if workers == 1 else min(self.chunk_bytes, self.worker_chunk_bytes)
        return max(1, min(share, limit // max(1, rows * l * itemsize)))

    def check(self, x):
        """The input's shape and dtype, and a kernel that fits; sets ``forward_flops``."""
        self.check_input(x, 4, self.in_ch)
        n, c, _, _ = x.shape
        _, o, oh, ow = self.out_shape(x.shape)
        k = self.k
        if oh < 1 or ow < 1:
            raise ValueError(f"{self.name}: input {x.shape} is smaller than the {k}x{k} kernel "
                             f"with pad {self.pad}")
        self.forward_flops = 2 * n * o * (c // self.groups) * k * k * oh * ow

    def forward(self, x, train=True):
        if self.groups == 1:
            return super().forward(x, train)
        self.check(x)
        cg, og = self.in_ch // self.groups, self.out_ch // self.groups
        self.save(None)
        parts = [conv.forward(x[:, g * cg:(g + 1) * cg], train)
                 for g, conv in enumerate(self._bound_groups())]
        self.save(x.shape if train else None)
        y = layout.empty_as(parts[0].shape[:1] + (self.out_ch,) + parts[0].shape[2:],
                            parts[0].dtype, all(map(layout.is_channel_major, parts)),
                            array_module(x))
        for g, part in enumerate(parts):
            y[:, g * og:(g + 1) * og] = part
        return y

    def backward(self, dy):
        if self.groups == 1:
            return super().backward(dy)
        shape = self.saved(tuple)
        cg, og = self.in_ch // self.groups, self.out_ch // self.groups
        parts = [conv.backward(dy[:, g * og:(g + 1) * og])
                 for g, conv in enumerate(self._bound_groups())]
        if not self.needs_input_grad:
            return None
        dx = layout.empty_as(shape, parts[0].dtype, all(map(layout.is_channel_major, parts)),
                             array_module(dy))
        for g, part in enumerate(parts):
            dx[:, g * cg:(g + 1) * cg] = part
        return dx

    def _bound_groups(self):
        """The groups' convolutions, each with its rows of this layer's W, b and gradients."""
        og = self.out_ch // self.groups
        for g, conv in enumerate(self.group_convs):
            rows = slice(g * og, (g + 1) * og)
            for name in self.params:
                conv.params[name], conv.grads[name] = self.params[name][rows], \
                    self.grads[name][rows]
            conv.needs_input_grad, conv.fuse_relu = self.needs_input_grad, self.fuse_relu
            conv.direct, conv.direct_chunk_bytes = self.direct, self.direct_chunk_bytes
            conv.winograd = self.winograd
        return self.group_convs
