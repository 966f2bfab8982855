/*
 * c-loops: a kernels plugin in plain C loops, against hydra_plugin.h alone (ABI version 2).
 *
 * It shows everything a device plugin (a GPU's) has to provide: its own memory, the copies on and
 * off it, and every compute function of the kernels table. Its "device memory" is an arena of
 * buffers from aligned_alloc that the host only ever sees as addresses to hand back: hydra-mpi
 * moves bytes through copy_to_device / copy_to_host / copy_on_device, never by itself. The arena
 * counts what is allocated, so that a leak or a buffer freed twice shows in the instance's report.
 *
 * The loops state each definition as hydra-mpi's `reference` kernels do, in the same order and with
 * the same double-precision sums, so that on the same inputs they give the same bits (compiled
 * with -ffp-contract=off: a fused multiply-add would round differently). They are slow on purpose.
 * Every call is synchronous, so the ordering rule of the header holds trivially.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hydra_plugin.h"

HYDRA_PLUGIN_ABI_VERSION_FUNCTION

/* One device: its arena's accounting. */
typedef struct device {
  char label[64];
  int64_t threads;
  atomic_llong live_bytes;
  atomic_llong live_buffers;
} device;

static int32_t create(void *context, int64_t threads, const char *label, void **instance, hydra_error *error) {
  (void)context;
  if (threads < 1) {
    snprintf(error->message, sizeof error->message, "threads_per_device must be at least 1, not %lld",
             (long long)threads);
    return HYDRA_ERROR_INPUT;
  }
  device *d = calloc(1, sizeof *d);
  if (!d) {
    snprintf(error->message, sizeof error->message, "out of host memory");
    return HYDRA_ERROR;
  }
  snprintf(d->label, sizeof d->label, "%s", label ? label : "device");
  d->threads = threads;
  *instance = d;
  return HYDRA_OK;
}

static void destroy(void *instance) { free(instance); }

/* -- Memory: the arena ----------------------------------------------------------------------- */

static void *allocate(void *instance, int64_t bytes, int32_t zeroed) {
  device *d = instance;
  size_t size = ((size_t)(bytes < 1 ? 1 : bytes) + 63) / 64 * 64;
  void *p = aligned_alloc(64, size);
  if (!p) return NULL;
  if (zeroed) memset(p, 0, size);
  atomic_fetch_add(&d->live_bytes, bytes);
  atomic_fetch_add(&d->live_buffers, 1);
  return p;
}

static void deallocate(void *instance, void *buffer, int64_t bytes) {
  device *d = instance;
  atomic_fetch_sub(&d->live_bytes, bytes);
  if (atomic_fetch_sub(&d->live_buffers, 1) <= 0) {
    fprintf(stderr, "c-loops %s: a buffer was freed that was not allocated\n", d->label);
    abort();
  }
  free(buffer);
}

static void copy_bytes(void *instance, void *destination, const void *source, int64_t bytes) {
  (void)instance;
  memcpy(destination, source, (size_t)bytes);
}

static void synchronize(void *instance) { (void)instance; }

/* -- Matrix products --------------------------------------------------------------------------- */

/* c(m, n) = alpha op(a) op(b) + beta c, each entry a double sum over k. */
static void gemm(void *instance, int32_t ta, int32_t tb, int64_t m, int64_t n, int64_t k, float alpha,
                 const float *a, int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc) {
  (void)instance;
  for (int64_t i = 0; i < m; i++) {
    for (int64_t j = 0; j < n; j++) {
      double sum = 0;
      for (int64_t p = 0; p < k; p++) {
        float av = ta ? a[p * lda + i] : a[i * lda + p];
        float bv = tb ? b[j * ldb + p] : b[p * ldb + j];
        sum += (double)av * (double)bv;
      }
      double prior = beta == 0 ? 0 : (double)beta * (double)c[i * ldc + j];
      c[i * ldc + j] = (float)((double)alpha * sum + prior);
    }
  }
}

static void gemm_batched(void *instance, int32_t ta, int32_t tb, int64_t m, int64_t n, int64_t k, float alpha,
                         const float *a, int64_t lda, int64_t stride_a, const float *b, int64_t ldb, int64_t stride_b,
                         float beta, float *c, int64_t ldc, int64_t stride_c, int64_t batch) {
  for (int64_t i = 0; i < batch; i++)
    gemm(instance, ta, tb, m, n, k, alpha, a + i * stride_a, lda, b + i * stride_b, ldb, beta, c + i * stride_c,
         ldc);
}

/* -- Bias ---------------------------------------------------------------------------------------- */

static void add_bias(void *instance, float *y, const float *bias, int64_t rows, int64_t cols) {
  (void)instance;
  for (int64_t r = 0; r < rows; r++)
    for (int64_t c = 0; c < cols; c++) y[r * cols + c] += bias[c];
}

static void accumulate_bias_gradient(void *instance, const float *dy, int64_t rows, int64_t cols, float *dbias) {
  (void)instance;
  for (int64_t c = 0; c < cols; c++) {
    double sum = 0;
    for (int64_t r = 0; r < rows; r++) sum += (double)dy[r * cols + c];
    dbias[c] = (float)((double)dbias[c] + sum);
  }
}

/* -- Activations --------------------------------------------------------------------------------- */

static double gelu_scale(void) { return sqrt(2.0 / M_PI); }

static void gelu_forward(void *instance, const float *x, float *y, int64_t count) {
  (void)instance;
  double s = gelu_scale();
  for (int64_t i = 0; i < count; i++) {
    double v = x[i];
    y[i] = (float)(0.5 * v * (1 + tanh(s * (v + 0.044715 * v * v * v))));
  }
}

static void gelu_backward(void *instance, const float *x, const float *dy, float *dx, int64_t count) {
  (void)instance;
  double s = gelu_scale();
  for (int64_t i = 0; i < count; i++) {
    double v = x[i];
    double u = s * (v + 0.044715 * v * v * v);
    double t = tanh(u);
    double du = s * (1 + 3 * 0.044715 * v * v);
    double grad = 0.5 * (1 + t) + 0.5 * v * (1 - t * t) * du;
    dx[i] = (float)(grad * (double)dy[i]);
  }
}

static void relu_forward(void *instance, const float *x, float *y, int64_t count) {
  (void)instance;
  for (int64_t i = 0; i < count; i++) y[i] = x[i] > 0 ? x[i] : 0;
}

static void relu_backward(void *instance, const float *x, const float *dy, float *dx, int64_t count) {
  (void)instance;
  for (int64_t i = 0; i < count; i++) dx[i] = x[i] > 0 ? dy[i] : 0;
}

/* -- LayerNorm ----------------------------------------------------------------------------------- */

static void layer_norm_forward(void *instance, const float *x, const float *gamma, const float *beta, float *y,
                               float *mean, float *rstd, int64_t rows, int64_t cols, float eps) {
  (void)instance;
  for (int64_t r = 0; r < rows; r++) {
    const float *row = x + r * cols;
    double mu = 0;
    for (int64_t c = 0; c < cols; c++) mu += (double)row[c];
    mu /= (double)cols;
    double variance = 0;
    for (int64_t c = 0; c < cols; c++) variance += ((double)row[c] - mu) * ((double)row[c] - mu);
    variance /= (double)cols;
    double s = 1 / sqrt(variance + (double)eps);
    for (int64_t c = 0; c < cols; c++)
      y[r * cols + c] = (float)(((double)row[c] - mu) * s * (double)gamma[c] + (double)beta[c]);
    mean[r] = (float)mu;
    rstd[r] = (float)s;
  }
}

/* With xhat = (x - mean) rstd and g = dy gamma: dx += rstd (g - mean(g) - xhat mean(g xhat)). */
static void layer_norm_backward(void *instance, const float *dy, const float *x, const float *gamma,
                                const float *mean, const float *rstd, float *dx, float *dgamma, float *dbeta,
                                int64_t rows, int64_t cols) {
  (void)instance;
  for (int64_t r = 0; r < rows; r++) {
    double mu = mean[r], s = rstd[r];
    double mean_g = 0, mean_gx = 0;
    for (int64_t c = 0; c < cols; c++) {
      double xhat = ((double)x[r * cols + c] - mu) * s;
      double g = (double)dy[r * cols + c] * (double)gamma[c];
      mean_g += g;
      mean_gx += g * xhat;
    }
    mean_g /= (double)cols;
    mean_gx /= (double)cols;
    for (int64_t c = 0; c < cols; c++) {
      double xhat = ((double)x[r * cols + c] - mu) * s;
      double g = (double)dy[r * cols + c] * (double)gamma[c];
      dx[r * cols + c] = (float)((double)dx[r * cols + c] + s * (g - mean_g - xhat * mean_gx));
    }
  }
  for (int64_t c = 0; c < cols; c++) {
    double sg = 0, sb = 0;
    for (int64_t r = 0; r < rows; r++) {
      double xhat = ((double)x[r * cols + c] - (double)mean[r]) * (double)rstd[r];
      sg += (double)dy[r * cols + c] * xhat;
      sb += (double)dy[r * cols + c];
    }
    dgamma[c] = (float)((double)dgamma[c] + sg);
    dbeta[c] = (float)((double)dbeta[c] + sb);
  }
}

/* -- Attention ----------------------------------------------------------------------------------- */

/* Ends the process: a kernel has no way to fail (the header's rule), and this one needs scratch. */
static void *scratch_or_die(size_t bytes) {
  void *p = malloc(bytes ? bytes : 1);
  if (!p) {
    fprintf(stderr, "c-loops: out of host memory for %zu bytes of scratch\n", bytes);
    exit(1);
  }
  return p;
}

static void attention_forward(void *instance, const float *qkv, float *out, float *probs, int64_t batch, int64_t seq,
                              int64_t channels, int64_t heads) {
  (void)instance;
  int64_t T = seq, C = channels, hs = C / heads;
  double scale = 1 / sqrt((double)hs);
  double *scores = scratch_or_die((size_t)T * sizeof(double));
  for (int64_t b = 0; b < batch; b++) {
    for (int64_t h = 0; h < heads; h++) {
      float *p = probs + (b * heads + h) * T * T;
      for (int64_t t = 0; t < T; t++) {
        const float *q = qkv + (b * T + t) * 3 * C + h * hs;
        double top = -INFINITY;
        for (int64_t u = 0; u <= t; u++) {
          const float *k = qkv + (b * T + u) * 3 * C + C + h * hs;
          double dot = 0;
          for (int64_t i = 0; i < hs; i++) dot += (double)q[i] * (double)k[i];
          scores[u] = dot * scale;
          if (scores[u] > top) top = scores[u];
        }
        double total = 0;
        for (int64_t u = 0; u <= t; u++) {
          scores[u] = exp(scores[u] - top);
          total += scores[u];
        }
        for (int64_t u = 0; u < T; u++) p[t * T + u] = u <= t ? (float)(scores[u] / total) : 0;
        float *o = out + (b * T + t) * C + h * hs;
        for (int64_t i = 0; i < hs; i++) {
          double sum = 0;
          for (int64_t u = 0; u <= t; u++)
            sum += (double)p[t * T + u] * (double)qkv[(b * T + u) * 3 * C + 2 * C + h * hs + i];
          o[i] = (float)sum;
        }
      }
    }
  }
  free(scores);
}

static void attention_backward(void *instance, const float *dout, const float *qkv, const float *probs, float *dqkv,
                               float *scratch, int64_t batch, int64_t seq, int64_t channels, int64_t heads) {
  (void)instance;
  (void)scratch;
  int64_t T = seq, C = channels, hs = C / heads;
  double scale = 1 / sqrt((double)hs);
  size_t n = (size_t)(batch * T * 3 * C);
  double *acc = scratch_or_die(n * sizeof(double));
  double *dp = scratch_or_die((size_t)T * sizeof(double));
  memset(acc, 0, n * sizeof(double));
#define AT(b, t, part, h, i) (((b) * T + (t)) * 3 * C + (part) * C + (h) * hs + (i))
  for (int64_t b = 0; b < batch; b++) {
    for (int64_t h = 0; h < heads; h++) {
      const float *p = probs + (b * heads + h) * T * T;
      for (int64_t t = 0; t < T; t++) {
        const float *dO = dout + (b * T + t) * C + h * hs;
        /* dP[t, u] = dO[t] . v[u]; dv[u] += P[t, u] dO[t] */
        for (int64_t u = 0; u <= t; u++) {
          double dot = 0;
          for (int64_t i = 0; i < hs; i++) {
            dot += (double)dO[i] * (double)qkv[AT(b, u, 2, h, i)];
            acc[AT(b, u, 2, h, i)] += (double)p[t * T + u] * (double)dO[i];
          }
          dp[u] = dot;
        }
        /* dS[t, u] = P[t, u] (dP[t, u] - sum_w P[t, w] dP[t, w]) */
        double inner = 0;
        for (int64_t u = 0; u <= t; u++) inner += (double)p[t * T + u] * dp[u];
        for (int64_t u = 0; u <= t; u++) {
          double ds = (double)p[t * T + u] * (dp[u] - inner) * scale;
          for (int64_t i = 0; i < hs; i++) {
            acc[AT(b, t, 0, h, i)] += ds * (double)qkv[AT(b, u, 1, h, i)];
            acc[AT(b, u, 1, h, i)] += ds * (double)qkv[AT(b, t, 0, h, i)];
          }
        }
      }
    }
  }
#undef AT
  for (size_t i = 0; i < n; i++) dqkv[i] = (float)acc[i];
  free(dp);
  free(acc);
}

/* -- Embeddings ---------------------------------------------------------------------------------- */

static void embedding_forward(void *instance, const int32_t *tokens, const float *wte, const float *wpe, float *out,
                              int64_t batch, int64_t seq, int64_t channels) {
  (void)instance;
  for (int64_t i = 0; i < batch * seq; i++) {
    int64_t tok = tokens[i], pos = i % seq;
    for (int64_t c = 0; c < channels; c++)
      out[i * channels + c] = wte[tok * channels + c] + wpe[pos * channels + c];
  }
}

static void embedding_backward(void *instance, const float *dout, const int32_t *tokens, float *dwte, float *dwpe,
                               int64_t batch, int64_t seq, int64_t channels) {
  (void)instance;
  for (int64_t i = 0; i < batch * seq; i++) {
    int64_t tok = tokens[i], pos = i % seq;
    for (int64_t c = 0; c < channels; c++) {
      dwte[tok * channels + c] += dout[i * channels + c];
      dwpe[pos * channels + c] += dout[i * channels + c];
    }
  }
}

/* -- Loss ---------------------------------------------------------------------------------------- */

static void softmax_cross_entropy(void *instance, const float *logits, const int32_t *targets, int64_t rows,
                                  int64_t classes, float *dlogits, float grad_scale, double *loss,
                                  int64_t *correct) {
  (void)instance;
  double total_loss = 0;
  int64_t right = 0;
  for (int64_t r = 0; r < rows; r++) {
    const float *row = logits + r * classes;
    double top = -INFINITY;
    int64_t best = 0;
    for (int64_t c = 0; c < classes; c++)
      if ((double)row[c] > top) {
        top = (double)row[c];
        best = c;
      }
    double total = 0;
    for (int64_t c = 0; c < classes; c++) total += exp((double)row[c] - top);
    int64_t target = targets[r];
    total_loss += log(total) - ((double)row[target] - top);
    if (best == target) right++;
    if (dlogits) {
      for (int64_t c = 0; c < classes; c++) {
        double p = exp((double)row[c] - top) / total;
        dlogits[r * classes + c] = (float)((p - (c == target ? 1 : 0)) * (double)grad_scale);
      }
    }
  }
  *loss = total_loss;
  *correct = right;
}

/* -- Elementwise and reductions ------------------------------------------------------------------- */

static void add(void *instance, const float *a, const float *b, float *out, int64_t count) {
  (void)instance;
  for (int64_t i = 0; i < count; i++) out[i] = a[i] + b[i];
}

static void accumulate(void *instance, const float *x, float *y, int64_t count) {
  (void)instance;
  for (int64_t i = 0; i < count; i++) y[i] += x[i];
}

static void copy(void *instance, const float *src, float *dst, int64_t count) {
  (void)instance;
  for (int64_t i = 0; i < count; i++) dst[i] = src[i];
}

static void fill(void *instance, float *x, float value, int64_t count) {
  (void)instance;
  for (int64_t i = 0; i < count; i++) x[i] = value;
}

static void scale(void *instance, float *x, float factor, int64_t count) {
  (void)instance;
  for (int64_t i = 0; i < count; i++) x[i] *= factor;
}

static void sum_of_squares(void *instance, const float *x, int64_t count, double *result) {
  (void)instance;
  double sum = 0;
  for (int64_t i = 0; i < count; i++) sum += (double)x[i] * (double)x[i];
  *result = sum;
}

/* -- Optimizers ---------------------------------------------------------------------------------- */

static void sgd_step(void *instance, float *param, const float *grad, float *momentum_buffer, int64_t count, float lr,
                     float momentum, float weight_decay, int64_t step) {
  (void)instance;
  for (int64_t i = 0; i < count; i++) {
    float g = grad[i] + weight_decay * param[i];
    momentum_buffer[i] = step == 1 ? g : momentum * momentum_buffer[i] + g;
    param[i] -= lr * momentum_buffer[i];
  }
}

static void adamw_step(void *instance, float *param, const float *grad, float *m, float *v, int64_t count, float lr,
                       float beta1, float beta2, float eps, float weight_decay, int64_t step) {
  (void)instance;
  double c1 = 1 - pow((double)beta1, (double)step);
  double c2 = 1 - pow((double)beta2, (double)step);
  for (int64_t i = 0; i < count; i++) {
    double g = grad[i];
    param[i] = (float)((double)param[i] * (1 - (double)lr * (double)weight_decay));
    m[i] = (float)((double)beta1 * (double)m[i] + (1 - (double)beta1) * g);
    v[i] = (float)((double)beta2 * (double)v[i] + (1 - (double)beta2) * g * g);
    double mhat = (double)m[i] / c1;
    double vhat = (double)v[i] / c2;
    param[i] = (float)((double)param[i] - (double)lr * mhat / (sqrt(vhat) + (double)eps));
  }
}

/* -- Registration -------------------------------------------------------------------------------- */

int32_t hydra_plugin_register(const hydra_host *host, const hydra_registrar *registrar, hydra_error *error) {
  if (host->abi_version < 2) {
    snprintf(error->message, sizeof error->message,
             "c-loops needs a host of plugin ABI version 2 or later (kernels); this one speaks %u",
             host->abi_version);
    return HYDRA_ERROR;
  }
  hydra_kernels k = {
    .abi_version = HYDRA_PLUGIN_ABI_VERSION,
    .struct_size = sizeof(hydra_kernels),
    .name = "c-loops",
    .context = NULL,
    .flags = 0,
    .create = create,
    .destroy = destroy,
    .allocate = allocate,
    .deallocate = deallocate,
    .copy_to_device = copy_bytes,
    .copy_to_host = copy_bytes,
    .copy_on_device = copy_bytes,
    .synchronize = synchronize,
    .gemm = gemm,
    .gemm_batched = gemm_batched,
    .add_bias = add_bias,
    .accumulate_bias_gradient = accumulate_bias_gradient,
    .gelu_forward = gelu_forward,
    .gelu_backward = gelu_backward,
    .relu_forward = relu_forward,
    .relu_backward = relu_backward,
    .layer_norm_forward = layer_norm_forward,
    .layer_norm_backward = layer_norm_backward,
    .attention_forward = attention_forward,
    .attention_backward = attention_backward,
    .embedding_forward = embedding_forward,
    .embedding_backward = embedding_backward,
    .softmax_cross_entropy = softmax_cross_entropy,
    .add = add,
    .accumulate = accumulate,
    .copy = copy,
    .fill = fill,
    .scale = scale,
    .sum_of_squares = sum_of_squares,
    .sgd_step = sgd_step,
    .adamw_step = adamw_step,
  };
  return registrar->add_kernels(registrar->host, &k, error);
}
