"""Numba kernels of the piecewise Gauss-Legendre rule for population integrals.

The innermost level is a line. Along a line with coordinate s the logits are
alpha_j s + cst_j. Their upper envelope gives the breakpoints where the top
logit changes. Each integrand g(w) (w the softmax of the logits) is split
into its hard-assignment part g(h), h the indicator of the top logit (shared
equally by a group of identical logits), and the remainder g(w) - g(h). The
hard part is a polynomial times the normal density on each interval of the
envelope and is integrated in closed form with the normal CDF and density.
The remainder decays like exp(-gap), gap the distance of the other logits
below the top one; it is integrated with Gauss-Legendre panels graded
geometrically away from each breakpoint (first width c0 / slope difference,
each next one `growth` times wider, up to `cap`), only where exp(-gap) phi(s
- m_i) exceeds exp(-drop) for some true component i.

Argument bundles (tuples, so that the signatures stay readable):

- ``logits = (alpha, cst, rep, gsz)``: (K,) slopes, intercepts, the first
  index of each logit's group of identical logits, and the group's size.
- ``comps = (ms, wt, rad)``: (K0,) means of the true components along the
  line, their weights (0: left out) and radii: rad_i^2 / 2 is the budget,
  in log units, left for this line once the outer levels' Gaussian factors
  are paid (the ball of radius sqrt(2 drop) around each true center).
- ``rule = (mode, pidx, xs, ws, prm)``: mode 0 (w_j), 2 (w_j and the
  log-sum-exp) or 1 (w_j w_l, j <= l, with index pidx[j, l]), the
  Gauss-Legendre nodes and weights on [-1, 1], and
  ``prm = [radius, drop, c0, growth, cap, rate_max]``.
- ``out = (m0, m1, m2, ml, cnt)``: (K0, Q) integrals of g_q s^p phi(s - m_i)
  wt_i for p = 0, 1, 2 (m2 in mode 1 only), (K0,) the same for the
  log-sum-exp (mode 2; its hard part is always there), and a one-element
  counter of evaluated nodes.

The outer levels. For r = 2 the outer coordinate t is integrated with panels
over the union of the true components' ranges. The inner integral (hard part
included) is an analytic function of t except near the t of three-way ties
of the logits (junctions of the partition of the plane by the top logit),
where the inner envelope changes; those are the outer breakpoints, with
panels graded away from them as along a line. Elsewhere panels are at most
`cap` wide, divided by how fast the switching lines move along s per unit of
t (at most `rate_max`). For r = 3 the outermost coordinate does the same
with the four-way ties (vertices), and each of its nodes is a plane problem.

The bundles are the same there, with matrices a (K, r) of slopes in place of
alpha (column 0 innermost) and means (K0, r); ``acc = (acc0, acc1, acc2,
accl, cnt)`` holds (K0, Q), (K0, Q, r), (Q, r, r) and (K0,) integrals in z =
(s, t, ...) and the node counter.

All kernels live in this one module on purpose: numba's on-disk cache of a
function is invalidated only when the function's own source file changes, so
kernels that call kernels of another module could run stale code.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)

# Normal arguments beyond this are infinite: the tail mass is below 1e-300.
_U_CLIP = 38.0

JIT = {"cache": True, "error_model": "numpy", "nogil": True}


@njit(**JIT)
def _normal_mass(a, b):
    """Phi(b) - Phi(a) for a <= b, from the tail that keeps its digits."""
    if a >= 0.0:
        return 0.5 * (math.erfc(a * _INV_SQRT_2) - math.erfc(b * _INV_SQRT_2))
    if b <= 0.0:
        return 0.5 * (math.erfc(-b * _INV_SQRT_2) - math.erfc(-a * _INV_SQRT_2))
    return 1.0 - 0.5 * math.erfc(-a * _INV_SQRT_2) - 0.5 * math.erfc(b * _INV_SQRT_2)


@njit(**JIT)
def _u_moments(a, b):
    """Integrals of u^p phi(u) over [a, b] for p = 0, 1, 2."""
    a = max(a, -_U_CLIP)
    b = min(b, _U_CLIP)
    if b <= a:
        return 0.0, 0.0, 0.0
    pa = INV_SQRT_2PI * math.exp(-0.5 * a * a)
    pb = INV_SQRT_2PI * math.exp(-0.5 * b * b)
    i0 = _normal_mass(a, b)
    return i0, pa - pb, i0 + a * pa - b * pb


@njit(**JIT)
def envelope(alpha, cst, rep, bp, top):
    """Upper envelope of the lines alpha_j s + cst_j (group representatives).

    Writes the breakpoints into bp[:nb] (nondecreasing) and the top line of
    each of the nb + 1 intervals into top[:nb + 1]; returns nb.
    """
    cur = -1
    for j in range(alpha.size):
        if rep[j] != j:
            continue
        if cur < 0 or alpha[j] < alpha[cur]:
            cur = j
        elif alpha[j] == alpha[cur] and cst[j] > cst[cur]:
            cur = j
    top[0] = cur
    nb = 0
    pos = -np.inf
    while True:
        best = -1
        best_x = np.inf
        for j in range(alpha.size):
            if rep[j] != j or alpha[j] <= alpha[cur]:
                continue
            x = (cst[cur] - cst[j]) / (alpha[j] - alpha[cur])
            if best < 0 or x < best_x or (x == best_x and alpha[j] > alpha[best]):
                best = j
                best_x = x
        if best < 0:
            return nb
        # Rounding can put a crossing a hair before the previous one.
        best_x = max(best_x, pos)
        bp[nb] = best_x
        nb += 1
        top[nb] = best
        cur = best
        pos = best_x


@njit(**JIT)
def merge_intervals(lo, hi, n, out_lo, out_hi):
    """Union of the intervals [lo[i], hi[i]], i < n; returns their count."""
    order = np.argsort(lo[:n])
    count = 0
    for idx in order:
        if count > 0 and lo[idx] <= out_hi[count - 1]:
            out_hi[count - 1] = max(out_hi[count - 1], hi[idx])
        else:
            out_lo[count] = lo[idx]
            out_hi[count] = hi[idx]
            count += 1
    return count


@njit(**JIT)
def _panel(a, b, top_j, logits, comps, rule, out, ev, rem):
    """Add the remainder g(w(s)) - g(h(s)) over the panel [a, b] (or [b, a])."""
    alpha, cst, rep, gsz = logits
    ms, wt, rad = comps
    mode, pidx, xs, ws, _ = rule
    m0, m1, m2, ml, cnt = out
    n_lines = alpha.size
    n_q = rem.size
    inv_g = 1.0 / gsz[top_j]
    mid = 0.5 * (a + b)
    half = 0.5 * abs(b - a)
    cnt[0] += xs.size
    for node in range(xs.size):
        s = mid + half * xs[node]
        omega = half * ws[node]
        y_top = alpha[top_j] * s + cst[top_j]
        s_top = 0.0
        s_other = 0.0
        for j in range(n_lines):
            x = alpha[j] * s + cst[j] - y_top
            # exp(-50) = 2e-22 is below any accuracy asked for; skip the call.
            e = 1.0 if j == top_j else (0.0 if x < -50.0 else math.exp(x))
            ev[j] = e
            if rep[j] == top_j:
                s_top += e
            else:
                s_other += e
        inv = 1.0 / (s_top + s_other)
        for j in range(n_lines):
            ev[j] *= inv
        r_lse = 0.0
        if mode != 1:
            for j in range(n_lines):
                rem[j] = ev[j] - (inv_g if rep[j] == top_j else 0.0)
        if mode == 2:
            r_lse = math.log(s_top * inv_g) + math.log1p(s_other / s_top)
        if mode == 1:
            for j in range(n_lines):
                hj = inv_g if rep[j] == top_j else 0.0
                for j2 in range(j, n_lines):
                    hl = inv_g if rep[j2] == top_j else 0.0
                    rem[pidx[j, j2]] = ev[j] * ev[j2] - hj * hl
        for i in range(ms.size):
            u = s - ms[i]
            if wt[i] <= 0.0 or abs(u) > rad[i]:
                continue
            f = omega * wt[i] * INV_SQRT_2PI * math.exp(-0.5 * u * u)
            fs = f * s
            for q in range(n_q):
                m0[i, q] += f * rem[q]
                m1[i, q] += fs * rem[q]
            if mode == 2:
                ml[i] += f * r_lse
            elif mode == 1:
                fss = fs * s
                for q in range(n_q):
                    m2[i, q] += fss * rem[q]


@njit(**JIT)
def _graded(p, direction, xa, xb, h0, top_j, logits, comps, rule, out, ev, rem):
    """Panels graded away from p over the distances [xa, xb] in `direction`."""
    prm = rule[4]
    growth = prm[3]
    cap = prm[4]
    x = xa
    while x < xb:
        x2 = min(x + min(cap, h0 + (growth - 1.0) * x), xb)
        _panel(p + direction * x, p + direction * x2, top_j, logits, comps, rule, out,
               ev, rem)  # fmt: skip
        x = x2


@njit(**JIT)
def _hard_part(lo, hi, top_j, logits, comps, rule, out):
    """Closed-form integral of g(h) over [lo, hi], where top_j is on top."""
    alpha, cst, rep, gsz = logits
    ms, wt, _ = comps
    mode, pidx, _, _, _ = rule
    m0, m1, m2, ml, _ = out
    inv_g = 1.0 / gsz[top_j]
    for i in range(ms.size):
        if wt[i] <= 0.0:
            continue
        mi = ms[i]
        i0, i1, i2 = _u_moments(lo - mi, hi - mi)
        s0 = wt[i] * i0
        s1 = wt[i] * (i1 + mi * i0)
        if mode != 1:
            for j in range(alpha.size):
                if rep[j] == top_j:
                    m0[i, j] += s0 * inv_g
                    m1[i, j] += s1 * inv_g
            ml[i] += alpha[top_j] * s1 + (cst[top_j] + math.log(gsz[top_j])) * s0
            continue
        s2 = wt[i] * (i2 + 2.0 * mi * i1 + mi * mi * i0)
        h2 = inv_g * inv_g
        for j in range(alpha.size):
            if rep[j] != top_j:
                continue
            for j2 in range(j, alpha.size):
                if rep[j2] == top_j:
                    q = pidx[j, j2]
                    m0[i, q] += s0 * h2
                    m1[i, q] += s1 * h2
                    m2[i, q] += s2 * h2


@njit(**JIT)
def line_moments(logits, comps, rule, out):
    """Moments along one line, per true component, into `out` (zeroed first)."""
    alpha, cst, rep, _ = logits
    ms, wt, rad = comps
    prm = rule[4]
    m0, m1, m2, ml, _ = out
    n_lines = alpha.size
    n_true = ms.size
    drop = prm[1]
    m0[:] = 0.0
    m1[:] = 0.0
    m2[:] = 0.0
    ml[:] = 0.0
    active = False
    for i in range(n_true):
        if wt[i] > 0.0 and rad[i] > 0.0:
            active = True
    if not active:
        return

    bp = np.empty(n_lines)
    top = np.empty(n_lines, dtype=np.int64)
    nb = envelope(alpha, cst, rep, bp, top)
    for k in range(nb + 1):
        lo = -np.inf if k == 0 else bp[k - 1]
        hi = np.inf if k == nb else bp[k]
        if lo < hi:
            _hard_part(lo, hi, top[k], logits, comps, rule, out)

    # First panel width at each breakpoint: 1 / the fastest switching there.
    h0 = np.empty(max(nb, 1))
    for k in range(nb):
        p = bp[k]
        top_j = top[k]
        y_top = alpha[top_j] * p + cst[top_j]
        lam = 0.0
        for j in range(n_lines):
            if rep[j] == j and y_top - (alpha[j] * p + cst[j]) <= drop:
                lam = max(lam, abs(alpha[j] - alpha[top_j]))
        h0[k] = prm[4] if lam <= 0.0 else min(prm[4], prm[2] / lam)

    ev = np.empty(n_lines)
    rem = np.empty(m0.shape[1])
    need_lo = np.empty(n_true * n_lines)
    need_hi = np.empty(n_true * n_lines)
    piece_lo = np.empty(n_true * n_lines)
    piece_hi = np.empty(n_true * n_lines)
    for k in range(nb + 1):
        lo = -np.inf if k == 0 else bp[k - 1]
        hi = np.inf if k == nb else bp[k]
        if hi <= lo:
            continue
        top_j = top[k]
        # Where exp(-G(s)) phi(s - m_i) >= exp(-budget): with the gap
        # G(s) = da s + dc linear this is an interval, the set where the
        # convex G(s) + (s - m_i)^2 / 2 stays below rad_i^2 / 2.
        n_need = 0
        for j in range(n_lines):
            if rep[j] != j or j == top_j:
                continue
            da = alpha[top_j] - alpha[j]
            dc = cst[top_j] - cst[j]
            for i in range(n_true):
                if wt[i] <= 0.0 or rad[i] <= 0.0:
                    continue
                disc = da * da - 2.0 * (da * ms[i] + dc) + rad[i] * rad[i]
                if disc <= 0.0:
                    continue
                root = math.sqrt(disc)
                a = max(ms[i] - da - root, lo)
                b = min(ms[i] - da + root, hi)
                if a < b:
                    need_lo[n_need] = a
                    need_hi[n_need] = b
                    n_need += 1
        n_piece = merge_intervals(need_lo, need_hi, n_need, piece_lo, piece_hi)
        # Left of mid is graded from lo, right of it from hi.
        mid = 0.5 * (lo + hi)
        if lo == -np.inf:
            mid = -np.inf
        if hi == np.inf:
            mid = np.inf
        for t in range(n_piece):
            a = piece_lo[t]
            b = piece_hi[t]
            if lo == -np.inf and hi == np.inf:
                _graded(a, 1.0, 0.0, b - a, prm[4], top_j, logits, comps, rule, out,
                        ev, rem)  # fmt: skip
                continue
            if a < mid:
                _graded(lo, 1.0, a - lo, min(b, mid) - lo, h0[k - 1], top_j, logits,
                        comps, rule, out, ev, rem)  # fmt: skip
            if b > mid:
                _graded(hi, -1.0, hi - b, hi - max(a, mid), h0[k], top_j, logits,
                        comps, rule, out, ev, rem)  # fmt: skip


# --------------------------------------------------------------------------
# outer levels
# --------------------------------------------------------------------------


# Room for the panels of one outer level; far more than any case needs.
MAX_OUTER_PANELS = 4096


@njit(**JIT)
def _distribute(out, tv, acc, mode):
    """Add line moments into the accumulators with z = (s, tv[0], ...)."""
    m0, m1, m2, ml, _ = out
    acc0, acc1, acc2, accl, _ = acc
    n_true, n_q = m0.shape
    n_tv = tv.size
    mode1 = mode == 1
    for i in range(n_true):
        for q in range(n_q):
            acc0[i, q] += m0[i, q]
            acc1[i, q, 0] += m1[i, q]
            for a in range(n_tv):
                acc1[i, q, 1 + a] += tv[a] * m0[i, q]
        if not mode1:
            accl[i] += ml[i]
    if not mode1:
        return
    for q in range(n_q):
        s0 = 0.0
        s1 = 0.0
        s2 = 0.0
        for i in range(n_true):
            s0 += m0[i, q]
            s1 += m1[i, q]
            s2 += m2[i, q]
        acc2[q, 0, 0] += s2
        for a in range(n_tv):
            acc2[q, 0, 1 + a] += tv[a] * s1
            acc2[q, 1 + a, 0] += tv[a] * s1
            for c in range(n_tv):
                acc2[q, 1 + a, 1 + c] += tv[a] * tv[c] * s0


@njit(**JIT)
def _outer_panels(src, src_h0, n_src, sup_lo, sup_hi, n_sup, cap, growth, out_lo,
                  out_hi):  # fmt: skip
    """Panels over the support, graded away from the sorted sources src[:n_src].

    The line is cut halfway between neighbouring sources and each piece is
    graded from its source; without sources the panels are `cap` wide.
    Returns the number of panels written to out_lo, out_hi.
    """
    count = 0
    for t in range(n_sup):
        a = sup_lo[t]
        b = sup_hi[t]
        if n_src == 0:
            x = a
            while x < b:
                out_lo[count] = x
                out_hi[count] = min(x + cap, b)
                x = out_hi[count]
                count += 1
            continue
        for k in range(n_src):
            p = src[k]
            left = -np.inf if k == 0 else 0.5 * (src[k - 1] + p)
            right = np.inf if k == n_src - 1 else 0.5 * (p + src[k + 1])
            for direction in (-1.0, 1.0):
                if direction < 0.0:
                    x = p - min(p, b)
                    xb = p - max(left, a)
                else:
                    x = max(p, a) - p
                    xb = min(right, b) - p
                while x < xb:
                    x2 = min(x + min(cap, src_h0[k] + (growth - 1.0) * x), xb)
                    out_lo[count] = min(p + direction * x, p + direction * x2)
                    out_hi[count] = max(p + direction * x, p + direction * x2)
                    count += 1
                    x = x2
                if count > out_lo.size - 64:
                    raise ValueError("population quadrature: too many outer panels")
    return count


@njit(**JIT)
def _sort_sources(src, src_h0, n):
    """Sort the first n sources by position (insertion sort; n is small)."""
    for a in range(1, n):
        p = src[a]
        h = src_h0[a]
        b = a - 1
        while b >= 0 and src[b] > p:
            src[b + 1] = src[b]
            src_h0[b + 1] = src_h0[b]
            b -= 1
        src[b + 1] = p
        src_h0[b + 1] = h


@njit(**JIT)
def _support(mt, wt, rad, out_lo, out_hi):
    """Union of [mt_i - rad_i, mt_i + rad_i] over the active components."""
    lo = np.empty(mt.size)
    hi = np.empty(mt.size)
    n_act = 0
    for i in range(mt.size):
        if wt[i] > 0.0 and rad[i] > 0.0:
            lo[n_act] = mt[i] - rad[i]
            hi[n_act] = mt[i] + rad[i]
            n_act += 1
    return merge_intervals(lo, hi, n_act, out_lo, out_hi)


@njit(**JIT)
def _gap_above(a_mat, cst, rep, z, j):
    """How far the top logit at z is above logit j (0 if j is on top)."""
    y_j = cst[j]
    for c in range(z.size):
        y_j += a_mat[j, c] * z[c]
    gap = 0.0
    for o in range(a_mat.shape[0]):
        if rep[o] == o:
            y = cst[o]
            for c in range(z.size):
                y += a_mat[o, c] * z[c]
            gap = max(gap, y - y_j)
    return gap


@njit(**JIT)
def _diff_norm(a_mat, j, j2):
    acc = 0.0
    for c in range(a_mat.shape[1]):
        acc += (a_mat[j, c] - a_mat[j2, c]) ** 2
    return math.sqrt(acc)


@njit(**JIT)
def _rate(a_mat, rep, n_inner):
    """Largest |n_out| / |n_in| over the slope differences n of two logits.

    n_in: the first n_inner coordinates, n_out: the next one. It is how fast
    a switching plane slides along the inner coordinates per unit of the
    outer one.
    """
    rate = 0.0
    for j in range(a_mat.shape[0]):
        if rep[j] != j:
            continue
        for j2 in range(j + 1, a_mat.shape[0]):
            if rep[j2] != j2:
                continue
            inner = 0.0
            for c in range(n_inner):
                inner += (a_mat[j, c] - a_mat[j2, c]) ** 2
            outer = abs(a_mat[j, n_inner] - a_mat[j2, n_inner])
            if outer == 0.0:
                continue
            if inner == 0.0:
                return np.inf
            rate = max(rate, outer / math.sqrt(inner))
    return rate


@njit(**JIT)
def _solve(mat, rhs, out):
    """Solve a small square system by Gaussian elimination with pivoting.

    Returns False when it is nearly singular relative to its rows' norms.
    """
    n = rhs.size
    a = mat.copy()
    b = rhs.copy()
    scale = 1.0
    for r in range(n):
        scale *= math.sqrt(np.sum(a[r] ** 2))
    det = 1.0
    for c in range(n):
        piv = c + np.argmax(np.abs(a[c:, c]))
        if a[piv, c] == 0.0:
            return False
        if piv != c:
            for cc in range(n):
                a[c, cc], a[piv, cc] = a[piv, cc], a[c, cc]
            b[c], b[piv] = b[piv], b[c]
        det *= a[c, c]
        for r in range(c + 1, n):
            f = a[r, c] / a[c, c]
            for cc in range(c, n):
                a[r, cc] -= f * a[c, cc]
            b[r] -= f * b[c]
    if abs(det) <= 1e-12 * scale:
        return False
    for r in range(n - 1, -1, -1):
        acc = b[r]
        for cc in range(r + 1, n):
            acc -= a[r, cc] * out[cc]
        out[r] = acc / a[r, r]
    return True


@njit(**JIT)
def _ties(a_mat, cst, rep, drop, c0, cap, src, src_h0):
    """Points where r + 1 logits tie within `drop` of the top; returns count.

    src gets their last coordinate, src_h0 the first panel width there.
    """
    n_lines, r = a_mat.shape
    idx = np.zeros(r + 1, dtype=np.int64)
    mat = np.empty((r, r))
    rhs = np.empty(r)
    z = np.empty(r)
    n_src = 0
    # Enumerate increasing index tuples of length r + 1 over representatives.
    reps = np.array([j for j in range(n_lines) if rep[j] == j])
    n_rep = reps.size
    if n_rep < r + 1:
        return 0
    comb = np.arange(r + 1)
    while True:
        for x in range(r + 1):
            idx[x] = reps[comb[x]]
        j = idx[0]
        for x in range(r):
            other = idx[x + 1]
            for c in range(r):
                mat[x, c] = a_mat[j, c] - a_mat[other, c]
            rhs[x] = cst[other] - cst[j]
        if _solve(mat, rhs, z) and _gap_above(a_mat, cst, rep, z, j) <= drop:
            lam = 0.0
            for x in range(r + 1):
                for y in range(x + 1, r + 1):
                    lam = max(lam, _diff_norm(a_mat, idx[x], idx[y]))
            src[n_src] = z[r - 1]
            src_h0[n_src] = min(cap, c0 / lam)
            n_src += 1
        # Next combination in lexicographic order.
        pos = r
        while pos >= 0 and comb[pos] == n_rep - (r + 1) + pos:
            pos -= 1
        if pos < 0:
            return n_src
        comb[pos] += 1
        for x in range(pos + 1, r + 1):
            comb[x] = comb[x - 1] + 1


@njit(**JIT)
def outer_panels(logits, comps, prm, out_lo, out_hi):
    """Panels of the last coordinate of a plane (r = 2) or space (r = 3).

    Breakpoints are the ties of r + 1 logits within `drop` of the top.
    Returns the number of panels.
    """
    a_mat, cst, rep, _ = logits
    means, wt, rad = comps
    n_lines, r = a_mat.shape
    cap = prm[4] / min(max(1.0, _rate(a_mat, rep, r - 1)), prm[5])
    sup_lo = np.empty(wt.size)
    sup_hi = np.empty(wt.size)
    n_sup = _support(np.ascontiguousarray(means[:, r - 1]), wt, rad, sup_lo, sup_hi)
    src = np.empty(n_lines ** (r + 1))
    src_h0 = np.empty(src.size)
    n_src = _ties(a_mat, cst, rep, prm[1], prm[2], cap, src, src_h0)
    _sort_sources(src, src_h0, n_src)
    return _outer_panels(src, src_h0, n_src, sup_lo, sup_hi, n_sup, cap, prm[3],
                         out_lo, out_hi)  # fmt: skip


@njit(**JIT)
def _slice(t, logits, comps, last, cst_in, wt_in, rad_in):
    """Fix the last coordinate at t: intercepts, weights and radii inside.

    `last` is the column of the fixed coordinate; wt_in gets the Gaussian
    factor phi(t - m_i) (times the caller's quadrature weight, applied by
    the caller), rad_in what is left of each ball. Returns False when no
    component reaches t.
    """
    a_mat, cst, _, _ = logits
    means, wt, rad = comps
    any_active = False
    for i in range(wt.size):
        u = t - means[i, last]
        if wt[i] > 0.0 and abs(u) < rad[i]:
            wt_in[i] = wt[i] * INV_SQRT_2PI * math.exp(-0.5 * u * u)
            rad_in[i] = math.sqrt(rad[i] * rad[i] - u * u)
            any_active = True
        else:
            wt_in[i] = 0.0
            rad_in[i] = 0.0
    for j in range(cst.size):
        cst_in[j] = cst[j] + a_mat[j, last] * t
    return any_active


@njit(**JIT)
def plane_strip(logits, comps, tv_out, lo, hi, rule, acc):
    """A plane problem integrated over t in [lo, hi] (one outer panel).

    z = (s, t, tv_out...); the moments go into `acc`.
    """
    a2, _, rep, gsz = logits
    ms2, wt, _ = comps
    _, _, xs, ws, _ = rule
    n_true = wt.size
    n_q = acc[0].shape[1]
    alpha = np.ascontiguousarray(a2[:, 0])
    ms = np.ascontiguousarray(ms2[:, 0])
    cst_line = np.empty(a2.shape[0])
    wt_line = np.empty(n_true)
    rad_line = np.empty(n_true)
    out = (np.empty((n_true, n_q)), np.empty((n_true, n_q)), np.empty((n_true, n_q)),
           np.empty(n_true), acc[4])  # fmt: skip
    tv = np.empty(tv_out.size + 1)
    tv[1:] = tv_out
    mid = 0.5 * (lo + hi)
    half = 0.5 * (hi - lo)
    for q in range(xs.size):
        t = mid + half * xs[q]
        if not _slice(t, logits, comps, 1, cst_line, wt_line, rad_line):
            continue
        wt_line *= half * ws[q]
        line_moments((alpha, cst_line, rep, gsz), (ms, wt_line, rad_line), rule, out)
        tv[0] = t
        _distribute(out, tv, acc, rule[0])


@njit(**JIT)
def space_strip(logits, comps, lo, hi, rule, acc):
    """A space problem (r = 3) integrated over its last coordinate in [lo, hi]."""
    a3, _, rep, gsz = logits
    ms3, wt, _ = comps
    _, _, xs, ws, prm = rule
    n_true = wt.size
    a2 = np.ascontiguousarray(a3[:, :2])
    ms2 = np.ascontiguousarray(ms3[:, :2])
    cst_pl = np.empty(a3.shape[0])
    wt_pl = np.empty(n_true)
    rad_pl = np.empty(n_true)
    tv = np.empty(1)
    p_lo = np.empty(MAX_OUTER_PANELS)
    p_hi = np.empty(MAX_OUTER_PANELS)
    mid = 0.5 * (lo + hi)
    half = 0.5 * (hi - lo)
    for q in range(xs.size):
        t = mid + half * xs[q]
        if not _slice(t, logits, comps, 2, cst_pl, wt_pl, rad_pl):
            continue
        wt_pl *= half * ws[q]
        tv[0] = t
        plane = (a2, cst_pl, rep, gsz)
        comps2 = (ms2, wt_pl, rad_pl)
        n_pan = outer_panels(plane, comps2, prm, p_lo, p_hi)
        for k in range(n_pan):
            plane_strip(plane, comps2, tv, p_lo[k], p_hi[k], rule, acc)


# --------------------------------------------------------------------------
# batched drivers: prm is (B, 6), one rule shape per batch member
# --------------------------------------------------------------------------


@njit(**JIT)
def _offsets(a_mat):
    """Intercepts -|a_j|^2 / 2 of the logits."""
    cst = np.empty(a_mat.shape[0])
    for j in range(a_mat.shape[0]):
        cst[j] = -0.5 * np.sum(a_mat[j] ** 2)
    return cst


@njit(**JIT)
def _line_item(b, slopes, means, rep, gsz, wt, mode, pidx, xs, ws, prm, acc0, acc1,
               acc2, accl, cnt):  # fmt: skip
    """r = 1: batch member b."""
    n_true = means.shape[1]
    n_q = acc0.shape[2]
    alpha = np.ascontiguousarray(slopes[b, :, 0])
    ms = np.ascontiguousarray(means[b, :, 0])
    rad = np.full(n_true, prm[b, 0])
    out = (np.empty((n_true, n_q)), np.empty((n_true, n_q)),
           np.empty((n_true, n_q)), np.empty(n_true), cnt[b : b + 1])  # fmt: skip
    line_moments((alpha, -0.5 * alpha * alpha, rep[b], gsz[b]), (ms, wt, rad),
                 (mode, pidx, xs, ws, prm[b]), out)  # fmt: skip
    acc = (acc0[b], acc1[b], acc2[b], accl[b], cnt[b : b + 1])
    _distribute(out, np.empty(0), acc, mode)


@njit(**JIT)
def drive_lines(start, stop, *args):
    """r = 1 for batch members start..stop-1: slopes (B, K, 1), means (B, K0, 1).

    Releases the GIL (nogil), so that callers can run chunks in threads.
    """
    for b in range(start, stop):
        _line_item(b, *args)


@njit(**JIT)
def outer_panels_batch(slopes, means, rep, gsz, wt, prm, out_lo, out_hi):
    """Outermost panels of every batch member (r = 2 or 3); returns counts."""
    n_batch = slopes.shape[0]
    counts = np.zeros(n_batch, dtype=np.int64)
    for b in range(n_batch):
        a_mat = np.ascontiguousarray(slopes[b])
        rad = np.full(wt.size, prm[b, 0])
        logits = (a_mat, _offsets(a_mat), rep[b], gsz[b])
        comps = (np.ascontiguousarray(means[b]), wt, rad)
        counts[b] = outer_panels(logits, comps, prm[b], out_lo[b], out_hi[b])
    return counts


@njit(**JIT)
def _strip_item(k, slopes, means, rep, gsz, wt, task_b, task_lo, task_hi, mode, pidx,
                xs, ws, prm, acc0, acc1, acc2, accl, cnt):  # fmt: skip
    """r = 2 or 3: task k, one outermost panel, into its own accumulators."""
    r = slopes.shape[2]
    b = task_b[k]
    a_mat = np.ascontiguousarray(slopes[b])
    rad = np.full(wt.size, prm[b, 0])
    logits = (a_mat, _offsets(a_mat), rep[b], gsz[b])
    comps = (np.ascontiguousarray(means[b]), wt, rad)
    rule = (mode, pidx, xs, ws, prm[b])
    acc = (acc0[k], acc1[k], acc2[k], accl[k], cnt[k : k + 1])
    if r == 2:
        plane_strip(logits, comps, np.empty(0), task_lo[k], task_hi[k], rule, acc)
    else:
        space_strip(logits, comps, task_lo[k], task_hi[k], rule, acc)


@njit(**JIT)
def drive_strips(start, stop, *args):
    """r = 2 or 3 for tasks start..stop-1 (one outermost panel each), nogil."""
    for k in range(start, stop):
        _strip_item(k, *args)
