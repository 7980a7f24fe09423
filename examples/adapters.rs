//! Lists the adapters wgpu finds and what this crate would use on each.
//!
//! `cargo run --example adapters`

fn main() {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    if adapters.is_empty() {
        println!("no adapter found");
    }
    for a in adapters {
        let i = a.get_info();
        let l = a.limits();
        println!(
            "{} ({:?}, {:?}, driver {:?} {:?}): workgroup storage {} B, storage buffers/stage {}, max binding {} B, subgroups {}..{}, features {:?}",
            i.name,
            i.backend,
            i.device_type,
            i.driver,
            i.driver_info,
            l.max_compute_workgroup_storage_size,
            l.max_storage_buffers_per_shader_stage,
            l.max_storage_buffer_binding_size,
            i.subgroup_min_size,
            i.subgroup_max_size,
            a.features() & wgpu_attention::OPTIONAL_FEATURES
        );
        let coop = a
            .features()
            .contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX);
        println!("  EXPERIMENTAL_COOPERATIVE_MATRIX: {coop}");
        for p in a.cooperative_matrix_properties() {
            println!("  cooperative matrix: {p:?}");
        }
    }
}
