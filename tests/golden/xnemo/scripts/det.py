# the deterministic-weight recipe of ../shared/fixtures/official/xnemo/README.md (not official code)
import zlib, math, torch
M = 2147483647
def det_uniform(key, n):
    x = (torch.arange(n, dtype=torch.int64) * 48271 + (zlib.crc32(key.encode()) % M)) % M
    for _ in range(3):
        x = x ^ ((x << 13) & 0x7FFFFFFF); x = x ^ (x >> 17); x = x ^ ((x << 5) & 0x7FFFFFFF)
        x = (x * 16807 + 12345) % M
    return x.to(torch.float64) / M
def det_value(key, ref):
    last = key.rsplit('.', 1)[-1]
    if last == 'num_batches_tracked': return torch.zeros_like(ref)
    if last in ('pe', 'pos_embed') or not ref.is_floating_point(): return ref.clone()
    u = det_uniform(key, ref.numel()).reshape(ref.shape) * 2 - 1
    if last == 'running_mean': v = 0.1 * u
    elif last == 'running_var': v = 1 + 0.5 * u
    elif ref.dim() >= 2: v = u * math.sqrt(3.0 / math.prod(ref.shape[1:]))
    elif last == 'bias': v = 0.1 * u
    else: v = 1 + 0.2 * u
    return v.to(ref.dtype)
def det_state_dict(module, prefix=''):
    return {k: det_value(prefix + k, v) for k, v in module.state_dict().items()}
