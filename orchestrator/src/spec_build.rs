//! `build:` in a spec file: `tugboat up` and `tugboat apply` build each service's image that
//! the image store under --data-dir lacks, from its Dockerfile, before anything is placed.
//!
//! Built on the host the command runs on, into that host's store: for `up` that is the
//! node's own store; for `apply` it serves a cluster whose node is this host. Other nodes
//! need the image by other means (`tugboat build` there, or a registry). Runs before the
//! async runtime starts, as `tugboat build` does (RUN steps start `tug` containers).

use crate::spec::{BuildSpec, SpecFile};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SpecBuildError {
    #[error("service {service}: building {image} from {context}: {source}")]
    Build {
        service: String,
        image: String,
        context: PathBuf,
        source: Box<tug_build::BuildError>,
    },
}

/// One image to build, for one service.
#[derive(Debug, Clone)]
pub struct PlannedBuild {
    pub service: String,
    pub image: String,
    pub options: tug_build::BuildOptions,
}

/// The builds `spec` asks for that the store under `data_dir` does not have yet; relative
/// contexts are taken from `spec_dir` (the spec file's directory). Two services with one
/// image build it once.
pub fn missing(spec: &SpecFile, spec_dir: &Path, data_dir: &Path) -> Vec<PlannedBuild> {
    let store = data_dir
        .join("images")
        .is_dir()
        .then(|| tug_image::ImageStore::open(data_dir).ok())
        .flatten();
    let mut planned: Vec<PlannedBuild> = vec![];
    for (name, service) in &spec.services {
        let Some(build) = &service.build else {
            continue;
        };
        let present = store
            .as_ref()
            .is_some_and(|s| s.resolve(&service.image).is_ok());
        if present || planned.iter().any(|p| p.image == service.image) {
            continue;
        }
        planned.push(PlannedBuild {
            service: name.clone(),
            image: service.image.clone(),
            options: options(build, &service.image, spec_dir, data_dir),
        });
    }
    planned
}

fn options(
    build: &BuildSpec,
    image: &str,
    spec_dir: &Path,
    data_dir: &Path,
) -> tug_build::BuildOptions {
    let context = spec_dir.join(&build.context);
    tug_build::BuildOptions {
        dockerfile: build.dockerfile.as_ref().map(|d| context.join(d)),
        context,
        tags: vec![image.to_string()],
        build_args: build.args.clone(),
        target: build.target.clone(),
        output: None,
        data_dir: data_dir.to_path_buf(),
        tug: None,
        quiet: false,
    }
}

/// Builds what is missing, saying so on stderr; the images built.
pub fn build_missing(
    spec: &SpecFile,
    spec_dir: &Path,
    data_dir: &Path,
) -> Result<Vec<String>, SpecBuildError> {
    let mut built = vec![];
    for plan in missing(spec, spec_dir, data_dir) {
        eprintln!(
            "building {} for service {} from {}",
            plan.image,
            plan.service,
            plan.options.context.display()
        );
        let report = tug_build::build(&plan.options).map_err(|source| SpecBuildError::Build {
            service: plan.service.clone(),
            image: plan.image.clone(),
            context: plan.options.context.clone(),
            source: Box::new(source),
        })?;
        for w in &report.warnings {
            eprintln!("warning: {w}");
        }
        built.push(plan.image);
    }
    Ok(built)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_missing_images_with_a_build_are_planned_from_the_files_directory() {
        let spec = crate::spec::parse_spec_file(
            "s.yaml",
            "services:\n  front:\n    image: shop/front:1\n    build: ./front\n  cart:\n    image: shop/cart:1\n    build: {context: cart, dockerfile: Containerfile, args: {V: '2'}}\n  also:\n    image: shop/front:1\n    build: ./front\n  db:\n    image: pg:1\n",
            &|_| false,
        )
        .unwrap();
        let data = tempfile::tempdir().unwrap();
        let plan = missing(&spec, Path::new("/src/shop"), data.path());
        let got: Vec<(&str, &str, PathBuf)> = plan
            .iter()
            .map(|p| {
                (
                    p.service.as_str(),
                    p.image.as_str(),
                    p.options.context.clone(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("also", "shop/front:1", PathBuf::from("/src/shop/./front")),
                ("cart", "shop/cart:1", PathBuf::from("/src/shop/cart")),
            ]
        );
        assert_eq!(
            plan[1].options.dockerfile,
            Some(PathBuf::from("/src/shop/cart/Containerfile"))
        );
        assert_eq!(plan[1].options.build_args["V"], "2");
        // The server never sees `build:`.
        assert!(spec
            .without_build()
            .services
            .values()
            .all(|s| s.build.is_none()));
    }
}
