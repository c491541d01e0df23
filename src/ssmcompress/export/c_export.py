"""The streaming step as dependency-free C99: a header and a source file, no heap, only libm.

``write_c(model, out_dir, name)`` writes

- ``NAME.h``: sizes as macros, the state struct ``NAME_state`` and the functions
  ``NAME_init`` / ``NAME_reset`` (zero state: a new stream), ``NAME_step`` (one token:
  ``const float x[NAME_D_INPUT]``, or ``long token`` for a vocab_size model, into
  ``float y[NAME_D_OUTPUT]``; returns 0, or -1 for a token out of range) and
  ``NAME_ssm_part`` (the SSM recurrences of all layers alone, chained, for timing);
- ``NAME.c``: the weights as ``static const float`` arrays and the recurrence of
  :mod:`.realstep`, per stored mode ``i`` and channel ``h`` in the operation order of the eager
  ``SSMLayer.step`` (so that, compiled without FMA contraction as ``-std=c99`` does, the SSM
  state is the eager float32 state);
- ``NAME_driver.c``: a command-line driver for tests, benchmarks and ``ssmcompress stream``
  (POSIX ``clock_gettime``; not needed on the target): ``NAME_driver run B`` reads float32
  inputs (steps, B, d_input) (int32 tokens (steps, B)) from stdin, writes float32 outputs
  (steps, B, d_output) to stdout and the microseconds per token to stderr;
  ``NAME_driver bench B STEPS [ssm]`` times B streams on built-in inputs.

Arrays of the SSM are stored mode-major, (n, H), so the loops over channels vectorise; linear
weights are stored transposed, (in, out), for the same reason.  The pooled running sum of mean
pooling is part of the state.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

from .realstep import NormWeights, StepWeights

__all__ = ["write_c", "c_sources", "quantize_int8", "dequantized_int8", "c_weight_bytes", "find_c_compiler", "compile_driver", "CStreamer", "CStepProcess", "C_FLAGS"]

C_FLAGS = ("-std=c99", "-O2")
C_MAX_BATCH = 256  # streams one driver process holds
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"The C name prefix must be a C identifier (letters, digits, underscores), got {name!r}.")
    return name


def _array(name: str, values, comment: str = "") -> str:
    values = np.asarray(values, dtype=np.float32).ravel()
    if not np.isfinite(values).all():
        raise ValueError(f"The weights {name} contain non-finite values; the model cannot be exported.")
    items = [f"{float(v):.9e}f" for v in values]
    text = ",\n".join("    " + ",".join(items[i:i + 8]) for i in range(0, len(items), 8))
    note = f" /* {comment} */" if comment else ""
    return f"static const float {name}[{values.size}] = {{{note}\n{text}\n}};\n"


def quantize_int8(weight):
    """Symmetric per-output-row int8 quantisation of a Linear weight (out, in): ``weight ~ q * scale[:, None]``.

    Returns ``q`` int8 (out, in) in [-127, 127] and ``scale`` float32 (out,) (1 for an all-zero row).
    """
    weight = np.asarray(weight, dtype=np.float32)
    if weight.ndim != 2 or not np.isfinite(weight).all():
        raise ValueError(f"quantize_int8 expects a finite 2-D weight (out, in), got shape {weight.shape}.")
    top = np.abs(weight).max(axis=1)
    scale = np.where(top > 0, top / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(weight / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


def dequantized_int8(weights: StepWeights) -> StepWeights:
    """A copy of ``weights`` whose Linear weights (encoder, GLU, decoder) are their int8 round trip ``q * scale``.

    The C export with ``int8=True`` computes exactly this model (up to float32 rounding).
    """
    def round_trip(w):
        q, scale = quantize_int8(w)
        return (q.astype(np.float32) * scale[:, None]).astype(np.float32)

    blocks = [dataclasses.replace(b, linear_weight=round_trip(b.linear_weight)) for b in weights.blocks]
    enc = weights.encoder_weight if weights.vocab_size is not None else round_trip(weights.encoder_weight)
    return dataclasses.replace(weights, blocks=blocks, encoder_weight=enc, decoder_weight=round_trip(weights.decoder_weight))


def c_weight_bytes(weights: StepWeights, int8: bool = False) -> int:
    """Bytes of the weight arrays of the C export (int8: one byte per Linear weight plus a float scale per output)."""
    total = 4 * weights.weight_count()
    if int8:
        linears = [b.linear_weight for b in weights.blocks] + [weights.decoder_weight]
        linears += [] if weights.vocab_size is not None else [weights.encoder_weight]
        total -= sum(3 * w.size - 4 * w.shape[0] for w in linears)
    return total


def _linear_arrays(prefix: str, weight, bias, int8: bool) -> str:
    n_out, n_in = weight.shape
    if not int8:
        return (_array(f"{prefix}_wt", weight.T, f"({n_in}, {n_out}) transposed Linear weight")
                + _array(f"{prefix}_b", bias))
    q, scale = quantize_int8(weight)
    rows = ",\n".join("    " + ",".join(str(int(v)) for v in q.T.ravel()[i:i + 16]) for i in range(0, q.size, 16))
    return (f"static const signed char {prefix}_q[{q.size}] = {{ /* ({n_in}, {n_out}) transposed int8 Linear weight */\n"
            f"{rows}\n}};\n" + _array(f"{prefix}_scale", scale, "per output") + _array(f"{prefix}_b", bias))


def _linear_call(prefix: str, x: str, y: str, n_in: int, n_out: int, int8: bool) -> str:
    if int8:
        return f"    linear_q8({prefix}_q, {prefix}_scale, {prefix}_b, {x}, {y}, {n_in}, {n_out});\n"
    return f"    linear({prefix}_wt, {prefix}_b, {x}, {y}, {n_in}, {n_out});\n"


_LINEAR_C = """/* y = W x + b with wt = W transposed (n_in, n_out): the inner loop runs over outputs and vectorises. */
static void linear(const float *restrict wt, const float *restrict b, const float *restrict x, float *restrict y,
                   int n_in, int n_out)
{
    int i, o;
    for (o = 0; o < n_out; ++o) y[o] = b[o];
    for (i = 0; i < n_in; ++i) {
        const float xi = x[i];
        const float *restrict w = wt + (size_t)i * n_out;
        for (o = 0; o < n_out; ++o) y[o] += w[o] * xi;
    }
}

"""

_LINEAR_Q8_C = """/* y = scale * (Q x) + b with int8 Q transposed (n_in, n_out) and one float scale per output.
 * Build with -O3 (GCC): at -O2 the int8-to-float conversion is not vectorised and this is 2-3x slower. */
static void linear_q8(const signed char *restrict qt, const float *restrict scale, const float *restrict b,
                      const float *restrict x, float *restrict y, int n_in, int n_out)
{
    int i, o;
    for (o = 0; o < n_out; ++o) y[o] = 0.0f;
    for (i = 0; i < n_in; ++i) {
        const float xi = x[i];
        const signed char *restrict q = qt + (size_t)i * n_out;
        for (o = 0; o < n_out; ++o) y[o] += (float)q[o] * xi;
    }
    for (o = 0; o < n_out; ++o) y[o] = y[o] * scale[o] + b[o];
}

"""


def _norm_code(prefix: str, norm: NormWeights, x: str, H: int) -> str:
    if norm.kind == "batch":  # running statistics folded into scale and shift
        return f"    affine({prefix}_scale, {prefix}_shift, {x}, {H});\n"
    return f"    layer_norm({prefix}_scale, {prefix}_shift, {x}, {H}, {norm.eps!r}f);\n"


_LAYER_NORM_C = """static void layer_norm(const float *scale, const float *shift, float *x, int H, float eps)
{
    double mean = 0.0, var = 0.0;
    float m, rstd;
    int h;
    for (h = 0; h < H; ++h) mean += x[h];
    mean /= H;
    for (h = 0; h < H; ++h) var += (x[h] - mean) * (x[h] - mean);
    var /= H;
    m = (float)mean;
    rstd = (float)(1.0 / sqrt(var + (double)eps));
    for (h = 0; h < H; ++h) x[h] = (x[h] - m) * rstd * scale[h] + shift[h];
}

"""

_AFFINE_C = """static void affine(const float *scale, const float *shift, float *x, int H)
{
    int h;
    for (h = 0; h < H; ++h) x[h] = x[h] * scale[h] + shift[h];
}

"""


def c_sources(weights: StepWeights, name: str = "ssm_model", int8: bool = False) -> dict:
    """The generated files as ``{filename: text}`` (header, source, driver).

    ``int8=True`` stores the Linear weights (encoder, GLU, decoder) as int8 with one float scale per
    output (:func:`quantize_int8`); the SSM, norms and biases stay float32.
    """
    if not isinstance(weights, StepWeights):
        raise ValueError(f"c_sources expects StepWeights, got {type(weights).__name__}.")
    name = _check_name(name)
    N = name.upper()
    H, L = weights.d_model, len(weights.blocks)
    tokens = weights.vocab_size is not None
    mean = weights.pool == "mean"

    # ------------------------------------------------------------------ header
    fields = []
    for i, b in enumerate(weights.blocks):
        fields += [f"    float ssm{i}_re[{b.n_modes * H}]; /* layer {i}: {b.n_modes} modes x {H} channels */",
                   f"    float ssm{i}_im[{b.n_modes * H}];"]
    if mean:
        fields += [f"    float pool_sum[{H}]; /* mean pooling: running sum of the features */",
                   "    unsigned long pool_count; /* tokens seen */"]
    x_arg = "long token" if tokens else f"const float x[{N}_D_INPUT]"
    header = f"""/* {name}.h: streaming step of an ssmcompress SequenceModel ({weights.kernel} kernel, state dims {weights.state_dims}).
 * Generated by ssmcompress; C99, no heap, only libm.  Usage:
 *     {name}_state s; float y[{N}_D_OUTPUT];
 *     {name}_init(&s);                  (or {name}_reset(&s) to start a new stream)
 *     for each token: {name}_step(&s, {"token" if tokens else "x"}, y);
 * y is the decoder output after this token ({"mean of the features so far" if mean else "features of this token"}). */
#ifndef {N}_H
#define {N}_H

#define {N}_D_INPUT {weights.d_input}
#define {N}_D_OUTPUT {weights.d_output}
#define {N}_D_MODEL {H}
#define {N}_LAYERS {L}
#define {N}_VOCAB_SIZE {weights.vocab_size or 0}
#define {N}_TOKENS {int(tokens)}
#define {N}_STATE_FLOATS {weights.state_count()}
#define {N}_WEIGHT_BYTES {c_weight_bytes(weights, int8)}
#define {N}_INT8_WEIGHTS {int(int8)} /* 1: Linear weights stored as int8 with a float scale per output */

typedef struct {{
{chr(10).join(fields)}
}} {name}_state;

void {name}_init({name}_state *s);
void {name}_reset({name}_state *s);
int {name}_step({name}_state *s, {x_arg}, float y[{N}_D_OUTPUT]);
void {name}_ssm_part({name}_state *s, float h[{N}_D_MODEL]);

#endif
"""

    # ------------------------------------------------------------------ weights
    arrays = []
    if tokens:
        arrays.append(_array("encoder_table", weights.encoder_weight, f"({weights.vocab_size}, {H}) embedding"))
    else:
        arrays.append(_linear_arrays("encoder", weights.encoder_weight, weights.encoder_bias, int8))
    for i, b in enumerate(weights.blocks):
        for k in ("lam_re", "lam_im", "B_re", "B_im", "C_re", "C_im"):
            arrays.append(_array(f"ssm{i}_{k}", getattr(b, k).T, f"({b.n_modes}, {H}) mode-major"))
        arrays.append(_array(f"ssm{i}_D", b.D))
        arrays.append(_linear_arrays(f"glu{i}", b.linear_weight, b.linear_bias, int8))
        arrays.append(_array(f"norm{i}_scale", b.norm.scale, f"{b.norm.kind} norm"))
        arrays.append(_array(f"norm{i}_shift", b.norm.shift))
    if weights.final_norm is not None:
        arrays.append(_array("final_norm_scale", weights.final_norm.scale, f"{weights.final_norm.kind} norm"))
        arrays.append(_array("final_norm_shift", weights.final_norm.shift))
    arrays.append(_linear_arrays("decoder", weights.decoder_weight, weights.decoder_bias, int8))

    # ------------------------------------------------------------------ step
    ssm_calls = "".join(
        f"    ssm(ssm{i}_lam_re, ssm{i}_lam_im, ssm{i}_B_re, ssm{i}_B_im, ssm{i}_C_re, ssm{i}_C_im, ssm{i}_D,\n"
        f"        s->ssm{i}_re, s->ssm{i}_im, {{u}}, {{y}}, {b.n_modes}, {H});\n" for i, b in enumerate(weights.blocks))
    ssm_lines = ssm_calls.splitlines(keepends=True)
    body = []
    if tokens:
        body.append(f"    if (token < 0 || token >= {weights.vocab_size}) return -1;\n"
                    f"    memcpy(h, encoder_table + (size_t)token * {H}, sizeof(h));\n")
    else:
        body.append(_linear_call("encoder", "x", "h", weights.d_input, H, int8))
    for i, b in enumerate(weights.blocks):
        body.append(f"    /* block {i} */\n")
        if weights.prenorm:
            body.append(f"    memcpy(z, h, sizeof(h));\n" + _norm_code(f"norm{i}", b.norm, "z", H))
            src = "z"
        else:
            src = "h"
        body.append("".join(ssm_lines[2 * i:2 * i + 2]).replace("{u}", src).replace("{y}", "y_ssm"))
        body.append(f"    for (h_i = 0; h_i < {H}; ++h_i) y_ssm[h_i] = gelu(y_ssm[h_i]);\n"
                    + _linear_call(f"glu{i}", "y_ssm", "g", H, 2 * H, int8) +
                    f"    for (h_i = 0; h_i < {H}; ++h_i) h[h_i] += g[h_i] * sigmoid(g[{H} + h_i]);\n")
        if not weights.prenorm:
            body.append(_norm_code(f"norm{i}", b.norm, "h", H))
    if weights.final_norm is not None:
        body.append(_norm_code("final_norm", weights.final_norm, "h", H))
    if mean:
        body.append(f"    s->pool_count += 1;\n"
                    f"    {{ const float count = (float)s->pool_count;\n"
                    f"      for (h_i = 0; h_i < {H}; ++h_i) {{ s->pool_sum[h_i] += h[h_i]; h[h_i] = s->pool_sum[h_i] / count; }} }}\n")
    body.append(_linear_call("decoder", "h", "y", H, weights.d_output, int8) + "    return 0;\n")
    ssm_part = "".join(
        "".join(ssm_lines[2 * i:2 * i + 2]).replace("{u}", "h").replace("{y}", "y_ssm")
        + f"    memcpy(h, y_ssm, sizeof(y_ssm));\n" for i in range(L))

    source = f"""/* {name}.c: generated by ssmcompress; see {name}.h.  C99, no heap, only libm. */
#include <math.h>
#include <stddef.h>
#include <string.h>
#include "{name}.h"

{"".join(arrays)}
{{linear_helper}}/* One step of a diagonal SSM layer in real arithmetic; arrays (n, H) mode-major.
 * x' = lam x + B u (complex, as real and imaginary parts),  y = 2 sum_modes Re(C x') + D u. */
static void ssm(const float *restrict lr, const float *restrict li, const float *restrict br, const float *restrict bi,
                const float *restrict cr, const float *restrict ci, const float *restrict d,
                float *restrict sr, float *restrict si, const float *restrict u, float *restrict y, int n, int H)
{{
    int i, h;
    for (h = 0; h < H; ++h) y[h] = 0.0f;
    for (i = 0; i < n; ++i) {{
        const size_t k0 = (size_t)i * H;
        for (h = 0; h < H; ++h) {{
            const size_t k = k0 + h;
            const float re = lr[k] * sr[k] - li[k] * si[k] + br[k] * u[h];
            const float im = lr[k] * si[k] + li[k] * sr[k] + bi[k] * u[h];
            sr[k] = re;
            si[k] = im;
            y[h] += cr[k] * re - ci[k] * im;
        }}
    }}
    for (h = 0; h < H; ++h) y[h] = 2.0f * y[h] + d[h] * u[h];
}}

{{norm_helpers}}/* GELU in its exact form x/2 (1 + erf(x / sqrt 2)), as torch.nn.functional.gelu. */
static float gelu(float x) {{ return x * 0.5f * (1.0f + erff(x * 0.707106781186547524f)); }}

static float sigmoid(float x) {{ return 1.0f / (1.0f + expf(-x)); }}

void {name}_reset({name}_state *s) {{ memset(s, 0, sizeof(*s)); }}

void {name}_init({name}_state *s) {{ {name}_reset(s); }}

int {name}_step({name}_state *s, {x_arg}, float y[{N}_D_OUTPUT])
{{
    float h[{H}], z[{H}], y_ssm[{H}], g[{2 * H}];
    int h_i;
    (void)z;
{"".join(body)}}}

void {name}_ssm_part({name}_state *s, float h[{N}_D_MODEL])
{{
    float y_ssm[{H}];
{ssm_part}}}
"""
    kinds = {b.norm.kind for b in weights.blocks} | ({weights.final_norm.kind} if weights.final_norm else set())
    norm_helpers = (_LAYER_NORM_C if "layer" in kinds else "") + (_AFFINE_C if "batch" in kinds else "")
    source = source.replace("{norm_helpers}", norm_helpers).replace("{linear_helper}", _LINEAR_Q8_C if int8 else _LINEAR_C)
    return {f"{name}.h": header, f"{name}.c": source, f"{name}_driver.c": _driver(weights, name)}


def _driver(weights: StepWeights, name: str) -> str:
    N = name.upper()
    tokens = weights.vocab_size is not None
    return f"""/* {name}_driver.c: command-line driver of {name}.c (tests, benchmarks, ssmcompress stream). POSIX.
 *   {name}_driver run B           stdin: {"int32 tokens (steps, B)" if tokens else "float32 (steps, B, D_INPUT)"}; stdout: float32 (steps, B, D_OUTPUT);
 *                                 stderr: "us_per_token X" (time in {name}_step only)
 *   {name}_driver bench B STEPS [ssm]   B streams on built-in inputs; prints us_per_token (wall clock) and
 *                                 cpu_us_per_token (this thread's CPU time); ssm: the SSM part alone */
#define _POSIX_C_SOURCE 199309L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "{name}.h"

#define MAX_BATCH {C_MAX_BATCH}
static {name}_state states[MAX_BATCH];

static double clock_seconds(clockid_t which)
{{
    struct timespec t;
    clock_gettime(which, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}}

static double now(void) {{ return clock_seconds(CLOCK_MONOTONIC); }}

static double cpu_now(void) {{ return clock_seconds(CLOCK_THREAD_CPUTIME_ID); }}

static int parse_batch(const char *text)
{{
    int b = atoi(text);
    if (b < 1 || b > MAX_BATCH) {{ fprintf(stderr, "batch must be in [1, %d]\\n", MAX_BATCH); exit(2); }}
    return b;
}}

static int run(int batch)
{{
    static {"int" if tokens else "float"} x[MAX_BATCH * {1 if tokens else N + "_D_INPUT"}];
    static float y[MAX_BATCH * {N}_D_OUTPUT];
    const size_t per = {1 if tokens else N + "_D_INPUT"};
    double spent = 0.0, t0;
    long steps = 0;
    int b;
    for (b = 0; b < batch; ++b) {name}_init(&states[b]);
    for (;;) {{
        size_t got = fread(x, sizeof(x[0]), per * batch, stdin);
        if (got == 0) break;
        if (got != per * batch) {{ fprintf(stderr, "input ends inside a step\\n"); return 1; }}
        t0 = now();
        for (b = 0; b < batch; ++b)
            if ({name}_step(&states[b], {"(long)x[b]" if tokens else "x + b * per"}, y + b * {N}_D_OUTPUT) != 0) {{
                fprintf(stderr, "token out of range at step %ld\\n", steps); return 1; }}
        spent += now() - t0;
        fwrite(y, sizeof(float), (size_t){N}_D_OUTPUT * batch, stdout);
        fflush(stdout);  /* one step in, one step out: the driver can sit behind a pipe */
        ++steps;
    }}
    fflush(stdout);
    fprintf(stderr, "us_per_token %.6g\\n", steps ? 1e6 * spent / ((double)steps * batch) : 0.0);
    return 0;
}}

static int bench(int batch, long steps, int ssm_only)
{{
    static float h[MAX_BATCH][{N}_D_MODEL];
    static float table[1024];
    float x[{N}_D_INPUT], y[{N}_D_OUTPUT], sink = 0.0f;
    double t0 = now(), c0 = cpu_now();
    long t;
    int b, i;
    (void)x;
    for (i = 0; i < 1024; ++i) table[i] = (float)sin(0.01 * i);  /* inputs, computed before the clock runs */
    for (b = 0; b < batch; ++b) {name}_init(&states[b]);
    for (t = -steps / 10 - 1; t < steps; ++t) {{  /* the first tenth warms up */
        if (t == 0) {{ t0 = now(); c0 = cpu_now(); }}
        for (b = 0; b < batch; ++b) {{
            const long k = labs(t + b);
            if (ssm_only) {{
                for (i = 0; i < {N}_D_MODEL; ++i) h[b][i] = table[(k + i) & 1023];
                {name}_ssm_part(&states[b], h[b]);
                sink += h[b][0];
            }} else {{
                for (i = 0; i < {N}_D_INPUT; ++i) x[i] = table[(k + i) & 1023];
                {name}_step(&states[b], {f"k % {weights.vocab_size}" if tokens else "x"}, y);
                sink += y[0];
            }}
        }}
    }}
    printf("us_per_token %.6g cpu_us_per_token %.6g\\n", 1e6 * (now() - t0) / ((double)steps * batch),
           1e6 * (cpu_now() - c0) / ((double)steps * batch));
    fprintf(stderr, "checksum %g\\n", (double)sink);
    return 0;
}}

int main(int argc, char **argv)
{{
    if (argc >= 3 && strcmp(argv[1], "run") == 0) return run(parse_batch(argv[2]));
    if (argc >= 4 && strcmp(argv[1], "bench") == 0)
        return bench(parse_batch(argv[2]), atol(argv[3]) > 0 ? atol(argv[3]) : 1, argc >= 5 && strcmp(argv[4], "ssm") == 0);
    fprintf(stderr, "usage: %s run BATCH < inputs > outputs | %s bench BATCH STEPS [ssm]\\n", argv[0], argv[0]);
    return 2;
}}
"""


def write_c(model, out_dir, name: str = "ssm_model", int8: bool = False) -> dict:
    """Write ``NAME.h``, ``NAME.c`` and ``NAME_driver.c`` for a ``SequenceModel`` (or :class:`StepWeights`) into ``out_dir``.

    Returns ``{filename: Path}``.
    """
    weights = model if isinstance(model, StepWeights) else StepWeights.from_model(model)
    files = c_sources(weights, name, int8=int8)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file; the C export writes a folder, give a folder path.")
    out.mkdir(parents=True, exist_ok=True)
    from ..checkpoint import write_text
    paths = {}
    for fname, text in files.items():
        write_text(out / fname, text)
        paths[fname] = out / fname
    return paths


def find_c_compiler():
    """The system C compiler (``$CC``, cc, gcc or clang), or None."""
    for candidate in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


def compile_driver(src_dir, name: str = "ssm_model", flags=C_FLAGS, extra=(), compiler=None) -> Path:
    """Compile ``NAME.c`` + ``NAME_driver.c`` in ``src_dir`` into ``src_dir/NAME_driver``; raise ValueError on failure."""
    name = _check_name(name)
    compiler = compiler or find_c_compiler()
    if compiler is None:
        raise ValueError("No C compiler found (looked for $CC, cc, gcc, clang); install one to build the C export.")
    src_dir = Path(src_dir)
    exe = src_dir / f"{name}_driver"
    cmd = [compiler, *flags, *extra, "-o", str(exe), str(src_dir / f"{name}.c"), str(src_dir / f"{name}_driver.c"), "-lm"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise ValueError(f"Compiling the C export failed: {' '.join(cmd)}: {res.stderr.strip()[:2000]}")
    return exe


class CStreamer:
    """Run a compiled driver (see :func:`compile_driver`) on a whole input array.

    ``run(xs)`` with xs (length, batch, d_input) float or tokens (length, batch) returns
    ``(outputs (length, batch, d_output) float32, microseconds per token inside the step function)``.
    """

    def __init__(self, executable, d_output: int, tokens: bool = False):
        self.executable = str(executable)
        self.d_output = int(d_output)
        self.tokens = bool(tokens)

    def run(self, xs):
        xs = np.asarray(xs)
        if xs.ndim < 2:
            raise ValueError(f"CStreamer.run expects inputs (length, batch[, features]), got shape {xs.shape}.")
        length, batch = xs.shape[:2]
        if batch > C_MAX_BATCH:  # one driver process per chunk of streams
            parts = [self.run(xs[:, i:i + C_MAX_BATCH]) for i in range(0, batch, C_MAX_BATCH)]
            us = sum(u * p.shape[1] for p, u in parts) / batch
            return np.concatenate([p for p, _ in parts], axis=1), us
        data = np.ascontiguousarray(xs, dtype=np.int32 if self.tokens else np.float32).tobytes()
        res = subprocess.run([self.executable, "run", str(batch)], input=data, capture_output=True)
        if res.returncode != 0:
            raise ValueError(f"The C driver failed: {res.stderr.decode(errors='replace').strip()}")
        us = _us_per_token(res.stderr)
        out = np.frombuffer(res.stdout, dtype=np.float32)
        if out.size != length * batch * self.d_output:
            raise ValueError(f"The C driver wrote {out.size} numbers, expected {length * batch * self.d_output}.")
        return out.reshape(length, batch, self.d_output).copy(), us


def _us_per_token(stderr: bytes) -> float:
    text = stderr.decode(errors="replace")
    if "us_per_token" not in text:
        raise ValueError(f"The C driver failed: {text.strip() or 'no output'}")
    return float(text.split("us_per_token")[-1].split()[0])


class CStepProcess:
    """A compiled driver behind a pipe, one step at a time: ``step(x_t)`` -> (batch, d_output); ``close()`` -> us per token."""

    def __init__(self, executable, batch: int, d_output: int, tokens: bool = False):
        self.batch, self.d_output, self.tokens = int(batch), int(d_output), bool(tokens)
        self.proc = subprocess.Popen([str(executable), "run", str(self.batch)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def step(self, x_t) -> np.ndarray:
        data = np.ascontiguousarray(x_t, dtype=np.int32 if self.tokens else np.float32).tobytes()
        n = 4 * self.batch * self.d_output
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        out = self.proc.stdout.read(n)
        if len(out) != n:
            self.proc.kill()
            raise ValueError(f"The C driver failed: {self.proc.stderr.read().decode(errors='replace').strip()}")
        return np.frombuffer(out, dtype=np.float32).reshape(self.batch, self.d_output).copy()

    def close(self) -> float:
        self.proc.stdin.close()
        self.proc.stdout.read()
        err = self.proc.stderr.read()
        self.proc.wait()
        return _us_per_token(err)
