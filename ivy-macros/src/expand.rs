//! Code generation: the function stays as written; beside it, a type with the function's name
//! (in the type namespace only) that builds calls and implements `Task`.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{ItemFn, ReturnType, Type};

use crate::args::TaskArgs;
use crate::validate;

pub fn task(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let func: ItemFn = syn::parse2(item)?;
    // Parse errors of the options and of the function are reported together.
    let parsed = TaskArgs::parse(attr);
    let fallback = TaskArgs::default();
    let checked = validate::check(&func, parsed.as_ref().unwrap_or(&fallback));
    let (args, params) = match (parsed, checked) {
        (Ok(a), Ok(p)) => (a, p),
        (Err(mut a), Err(b)) => {
            a.combine(b);
            return Err(a);
        }
        (Err(e), _) | (_, Err(e)) => return Err(e),
    };

    let krate = args
        .krate
        .clone()
        .unwrap_or_else(|| syn::parse_quote!(::ivy));
    let p = quote!(#krate::__private);
    let vis = &func.vis;
    let fn_name = &func.sig.ident;
    let fn_name_str = fn_name.to_string();
    let fn_name_str = fn_name_str.strip_prefix("r#").unwrap_or(&fn_name_str);

    let name = match &args.name {
        Some(lit) => quote!(#lit),
        None => quote! {
            #p::dotted_str(&__IVY_NAME_BYTES)
        },
    };
    let name_consts = if args.name.is_none() {
        quote! {
            const __IVY_PATH: &str = ::core::concat!(::core::module_path!(), "::", #fn_name_str);
            const __IVY_NAME_LEN: usize = #p::dotted_len(__IVY_PATH);
            const __IVY_NAME_BYTES: [u8; __IVY_NAME_LEN] = #p::dotted::<__IVY_NAME_LEN>(__IVY_PATH);
        }
    } else {
        quote!()
    };

    let mut options = quote!(#p::TaskOptions::DEFAULT);
    if let Some(q) = &args.queue {
        options = quote!(#options.with_queue(#q));
    }
    if let Some(pr) = args.priority {
        options = quote!(#options.with_priority(#pr));
    }
    if let Some(n) = args.max_retries {
        options = quote!(#options.with_max_retries(#n));
    }
    for (d, method) in [
        (&args.retry_backoff, "with_retry_backoff"),
        (&args.retry_backoff_max, "with_retry_backoff_max"),
        (&args.timeout, "with_timeout"),
    ] {
        if let Some(d) = d {
            let ms = u64::try_from(d.value.as_millis())
                .expect("parse_duration keeps durations within u64 milliseconds");
            let m = format_ident!("{}", method);
            options = quote!(#options.#m(#p::Duration::from_millis(#ms)));
        }
    }

    let idents: Vec<_> = params.iter().map(|p| p.ident).collect();
    let names: Vec<String> = idents
        .iter()
        .map(|i| {
            let s = i.to_string();
            s.strip_prefix("r#").unwrap_or(&s).to_string()
        })
        .collect();
    let tys: Vec<&Type> = params.iter().map(|p| p.ty).collect();
    // Spanned at each type, so an unfit type is blamed where the user wrote it.
    let encodes: Vec<_> = params
        .iter()
        .zip(&names)
        .map(|(prm, name)| {
            let (ident, ty) = (prm.ident, prm.ty);
            quote_spanned! {ty.span()=> #p::encode_arg::<#ty>(&mut __ivy_args, #name, &#ident); }
        })
        .collect();
    let decodes: Vec<_> = params
        .iter()
        .zip(&names)
        .map(|(prm, name)| {
            let (ident, ty) = (prm.ident, prm.ty);
            quote_spanned! {ty.span()=> let #ident: #ty = #p::decode_arg::<#ty>(&mut __ivy_args, #name)?; }
        })
        .collect();
    let arg_checks = tys.iter().map(|ty| {
        quote_spanned! {ty.span()=> #p::assert_task_arg::<#ty>(); }
    });

    let (output_ty, is_result) = match &func.sig.output {
        ReturnType::Default => (quote!(()), false),
        ReturnType::Type(_, ty) if returns_result(ty) => {
            (quote!(<#ty as #p::TaskReturn>::Ok), true)
        }
        ReturnType::Type(_, ty) => (quote!(#ty), false),
    };
    let output_check = match &func.sig.output {
        ReturnType::Default => quote!(),
        ReturnType::Type(_, ty) => {
            quote_spanned! {ty.span()=> #p::assert_task_output::<#output_ty>(); }
        }
    };

    let invoke = if args.blocking.is_some() {
        quote! {
            #p::spawn_blocking(move || #fn_name(#(#idents),*))
                .await
                .map_err(#p::join_failure)?
        }
    } else {
        quote!(#fn_name(#(#idents),*).await)
    };
    let finish = if is_result {
        quote! {
            match #p::TaskReturn::into_result(__ivy_ret) {
                ::core::result::Result::Ok(v) => #p::encode_output(v),
                ::core::result::Result::Err(e) => {
                    #[allow(unused_imports)]
                    use #p::{ViaAsRefError as _, ViaDisplay as _, ViaError as _};
                    // The borrows choose the richest description of the error type.
                    #[allow(clippy::needless_borrow)]
                    let __ivy_failure = (&&#p::ErrWrap(&e)).ivy_failure();
                    ::core::result::Result::Err(__ivy_failure)
                }
            }
        }
    } else {
        quote!(#p::encode_output(__ivy_ret))
    };

    let doc = format!(
        "Delayed calls of the task [`{fn_name_str}`](fn@{fn_name_str}): `{fn_name_str}::call(..)` builds a call for `Producer::delayed_call`."
    );
    let call_doc =
        format!("A call of `{fn_name_str}` with these arguments, to give to a producer.");

    Ok(quote! {
        #func

        #[doc = #doc]
        #[allow(non_camel_case_types)]
        #vis struct #fn_name {
            _private: (),
        }

        impl #fn_name {
            #[doc = #call_doc]
            #[allow(clippy::too_many_arguments, clippy::needless_pass_by_value)]
            #vis fn call(#(#idents: #tys),*) -> #p::Call<#fn_name> {
                let mut __ivy_args = ::core::result::Result::Ok(#p::Map::new());
                #(#encodes)*
                #p::Call::__new(__ivy_args)
            }
        }

        const _: () = {
            #name_consts

            const _: () = {
                #(#arg_checks)*
                #output_check
            };

            impl #p::Task for #fn_name {
                const NAME: &'static str = #name;
                const OPTIONS: #p::TaskOptions = #options;
                type Output = #output_ty;

                #[allow(unused_mut)]
                fn run(
                    mut __ivy_args: #p::Map<::std::string::String, #p::Value>,
                ) -> impl ::core::future::Future<
                    Output = ::core::result::Result<#p::Value, #p::TaskFailure>,
                > + ::core::marker::Send {
                    async move {
                        #(#decodes)*
                        #p::no_extra_args(&__ivy_args)?;
                        let __ivy_ret = #invoke;
                        #finish
                    }
                }
            }

            #p::inventory::submit! { #p::TaskEntry::of::<#fn_name>() }
        };
    })
}

/// Whether the return type is spelled `Result<..>` (std's, `anyhow::Result`, `io::Result`...).
fn returns_result(ty: &Type) -> bool {
    match ty {
        Type::Path(tp) => tp.path.segments.last().is_some_and(|s| s.ident == "Result"),
        Type::Group(g) => returns_result(&g.elem),
        Type::Paren(p) => returns_result(&p.elem),
        _ => false,
    }
}
