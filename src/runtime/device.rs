//! The crate's one door to wgpu's `create_*` calls: every buffer, bind group, layout, shader
//! module, pipeline and command encoder the crate makes is made here and counted
//! ([`crate::ResourceCounts`]), so what a warm call creates is known in full, not only what
//! went through one helper. No other file of `src/` calls a `create_*` method of wgpu
//! (`tests/layers.rs` checks).

use std::sync::atomic::{AtomicU64, Ordering};

/// What a context has created, by kind.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    pub buffers: AtomicU64,
    pub bind_groups: AtomicU64,
    /// Bind group and pipeline layouts.
    pub layouts: AtomicU64,
    pub modules: AtomicU64,
    pub pipelines: AtomicU64,
    /// Driver pipeline caches ([`crate::Context::use_pipeline_cache`]).
    pub caches: AtomicU64,
    pub encoders: AtomicU64,
}

impl Counts {
    fn add(n: &AtomicU64) {
        n.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn get(n: &AtomicU64) -> u64 {
        n.load(Ordering::Relaxed)
    }
}

/// A device whose creations are counted.
#[derive(Clone, Copy)]
pub(crate) struct Dev<'a> {
    pub device: &'a wgpu::Device,
    pub counts: &'a Counts,
}

impl<'a> Dev<'a> {
    pub(crate) fn new_buffer(self, desc: &wgpu::BufferDescriptor<'_>) -> wgpu::Buffer {
        Counts::add(&self.counts.buffers);
        self.device.create_buffer(desc)
    }

    pub(crate) fn new_buffer_init(
        self,
        desc: &wgpu::util::BufferInitDescriptor<'_>,
    ) -> wgpu::Buffer {
        use wgpu::util::DeviceExt;
        Counts::add(&self.counts.buffers);
        self.device.create_buffer_init(desc)
    }

    pub(crate) fn new_bind_group(self, desc: &wgpu::BindGroupDescriptor<'_>) -> wgpu::BindGroup {
        Counts::add(&self.counts.bind_groups);
        self.device.create_bind_group(desc)
    }

    pub(crate) fn new_bind_group_layout(
        self,
        desc: &wgpu::BindGroupLayoutDescriptor<'_>,
    ) -> wgpu::BindGroupLayout {
        Counts::add(&self.counts.layouts);
        self.device.create_bind_group_layout(desc)
    }

    pub(crate) fn new_pipeline_layout(
        self,
        desc: &wgpu::PipelineLayoutDescriptor<'_>,
    ) -> wgpu::PipelineLayout {
        Counts::add(&self.counts.layouts);
        self.device.create_pipeline_layout(desc)
    }

    /// # Safety
    /// As `wgpu::Device::create_shader_module_trusted`: the caller vouches for the checks it
    /// turns off.
    pub(crate) unsafe fn new_shader_module_trusted(
        self,
        desc: wgpu::ShaderModuleDescriptor<'_>,
        checks: wgpu::ShaderRuntimeChecks,
    ) -> wgpu::ShaderModule {
        Counts::add(&self.counts.modules);
        // SAFETY: the caller's contract, passed on.
        unsafe { self.device.create_shader_module_trusted(desc, checks) }
    }

    pub(crate) fn new_compute_pipeline(
        self,
        desc: &wgpu::ComputePipelineDescriptor<'_>,
    ) -> wgpu::ComputePipeline {
        Counts::add(&self.counts.pipelines);
        self.device.create_compute_pipeline(desc)
    }

    /// # Safety
    /// As `wgpu::Device::create_pipeline_cache`: `desc.data`, if any, came from
    /// `wgpu::PipelineCache::get_data` on an adapter with the same pipeline-cache key.
    pub(crate) unsafe fn new_pipeline_cache(
        self,
        desc: &wgpu::PipelineCacheDescriptor<'_>,
    ) -> wgpu::PipelineCache {
        Counts::add(&self.counts.caches);
        // SAFETY: the caller's contract, passed on.
        unsafe { self.device.create_pipeline_cache(desc) }
    }

    pub(crate) fn new_encoder(
        self,
        desc: &wgpu::CommandEncoderDescriptor<'_>,
    ) -> wgpu::CommandEncoder {
        Counts::add(&self.counts.encoders);
        self.device.create_command_encoder(desc)
    }
}
