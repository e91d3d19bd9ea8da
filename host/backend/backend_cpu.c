/* backend_cpu.c - the CPU backend's op table (the dl_cpu_ reference ops) and backend lookup. */
#include "backend/backend.h"
#include "core/error.h"

#include <string.h>

const dl_backend dl_backend_cpu = {
    .name = "cpu",
    .linear_forward = dl_cpu_linear_forward,
    .linear_backward = dl_cpu_linear_backward,
    .conv2d_forward = dl_cpu_conv2d_forward,
    .conv2d_backward = dl_cpu_conv2d_backward,
    .groupnorm_forward = dl_cpu_groupnorm_forward,
    .groupnorm_backward = dl_cpu_groupnorm_backward,
    .layernorm_forward = dl_cpu_layernorm_forward,
    .layernorm_backward = dl_cpu_layernorm_backward,
    .attention_forward = dl_cpu_attention_forward,
    .attention_backward = dl_cpu_attention_backward,
    .act_forward = dl_cpu_act_forward,
    .act_backward = dl_cpu_act_backward,
    .geglu_forward = dl_cpu_geglu_forward,
    .geglu_backward = dl_cpu_geglu_backward,
    .add_forward = dl_cpu_add_forward,
    .scale_forward = dl_cpu_scale_forward,
    .axpy = dl_cpu_axpy,
    .add_bcast_forward = dl_cpu_add_bcast_forward,
    .add_bcast_backward = dl_cpu_add_bcast_backward,
    .concat_channels_forward = dl_cpu_concat_channels_forward,
    .concat_channels_backward = dl_cpu_concat_channels_backward,
    .upsample_nearest2x_forward = dl_cpu_upsample_nearest2x_forward,
    .upsample_nearest2x_backward = dl_cpu_upsample_nearest2x_backward,
    .timestep_embedding = dl_cpu_timestep_embedding,
    .lora_linear_forward = dl_cpu_lora_linear_forward,
    .lora_linear_backward = dl_cpu_lora_linear_backward,
    .lora_conv_forward = dl_cpu_lora_conv_forward,
    .lora_conv_backward = dl_cpu_lora_conv_backward,
    .lora_merge = dl_cpu_lora_merge,
    .lora_unmerge = dl_cpu_lora_unmerge,
    .mse_loss_forward = dl_cpu_mse_loss_forward,
    .mse_loss_backward = dl_cpu_mse_loss_backward,
    .adamw_step = dl_cpu_adamw_step,
    .sumsq = dl_cpu_sumsq,
};

const dl_backend *dl_backend_find(const char *name)
{
    if (name && strcmp(name, "cpu") == 0) return &dl_backend_cpu;
    if (name && strcmp(name, "cuda") == 0) {
#ifdef DANLU_HAVE_CUDA
        dl_error_set("backend \"cuda\": the CUDA backend is not yet wired into the networks "
                     "(its kernels are tested against the CPU ops under the SIMT emulator); "
                     "use \"cpu\"");
#else
        dl_error_set("backend \"cuda\": this build has no CUDA (configured without a CUDA "
                     "toolkit or with -DDANLU_CUDA=OFF); use \"cpu\"");
#endif
        return NULL;
    }
    dl_error_set("unknown backend \"%s\" (known: cpu, cuda)", name ? name : "(null)");
    return NULL;
}
